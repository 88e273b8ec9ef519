"""Which torch device trains candidates. Only training (and the validation that selects a snapshot)
runs there: a candidate's best snapshot comes back to the CPU, and everything the store keeps or
compares (reference test logits, the no-forgetting check, `predict`, `eval`) is computed on the CPU
with a fixed thread count. So a system grown on a GPU is checked bit for bit on any machine, and a GPU
changes which weights a search finds (other float rounding), never what a committed task predicts.

Names: "cpu", "cuda", "cuda:N", or "auto" (the first CUDA device when one is visible, else the CPU)."""
from __future__ import annotations

import re

import torch

from mupath.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: object) -> str:
    """`name` if it is a device name mupath accepts (syntax only: a remote Ray worker may have the GPU
    this process lacks), else a one-line ConfigError naming the accepted forms."""
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    return name.strip()


def resolve_device(name: str) -> str:
    """The concrete device this process trains on: "auto" becomes "cuda" or "cpu"; a CUDA device that
    this process cannot see is a one-line ConfigError with the fix (rather than torch's error inside
    every candidate)."""
    name = check_device_name(name)
    if name == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if available else "cpu"
    if not available:
        built = torch.version.cuda or "none"
        raise ConfigError(f"device '{name}' asked for, but no CUDA device is visible (torch {torch.__version__}, "
                          f"CUDA build {built}); use --device cpu or auto")
    index = int(name.split(":")[1]) if ":" in name else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device '{name}' asked for, but only {count} CUDA device(s) are visible "
                          f"(cuda:0..cuda:{count - 1}); pick one of those or use --device auto")
    return name


def wants_gpu(name: str) -> bool:
    """True when `name` asks for a GPU outright (not "auto", which falls back to the CPU)."""
    return check_device_name(name).startswith("cuda")
