"""Optimiser and learning-rate schedule of a candidate: SGD with momentum (optionally Nesterov), as in
the reference, or AdamW (our extension for random-init roots, where plain SGD learns too slowly);
linear warmup from lr/100 then cosine decay; no weight decay (the reference searches none)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
    params = list(params)
    name = hp.get("opt_name", "sgd")
    momentum = float(hp["opt_momentum"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=float(hp["opt_lr"]), momentum=momentum,
                               nesterov=bool(hp["opt_nesterov"]) and momentum > 0)
    if name == "adamw":
        # opt_momentum is Adam's beta1 and opt_nesterov selects the Nesterov variant (NAdam-style
        # decoupled decay): the same ordered lists serve both optimisers.
        if bool(hp["opt_nesterov"]):
            return torch.optim.NAdam(params, lr=float(hp["opt_lr"]), betas=(momentum, 0.999),
                                     weight_decay=0.0, decoupled_weight_decay=True)
        return torch.optim.AdamW(params, lr=float(hp["opt_lr"]), betas=(momentum, 0.999), weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name}")


def lr_at(step: int, total: int, hp: dict[str, Any]) -> float:
    """Learning rate at `step` of `total` (reference schedules: `cosine` = warmup from lr/100 to lr over
    warmup_ratio*T then cosine decay to 0; `constant` = 0.5*lr so the average matches)."""
    lr = float(hp["opt_lr"])
    schedule = hp.get("opt_lr_schedule", "cosine")
    if schedule == "constant":
        return 0.5 * lr
    warmup = int(float(hp["opt_lr_warmup_ratio"]) * total)
    if step < warmup:
        return lr / 100 + (lr - lr / 100) * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, progress)))
