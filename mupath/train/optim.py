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


def lr_at(step: int, total: int, hp: dict[str, Any], *, horizon: float = 1.0, start: float | None = None) -> float:
    """Learning rate at `step` of `total` (reference schedules: `cosine` = warmup from lr/100 to lr over
    warmup_ratio*T then cosine decay to 0; `constant` = 0.5*lr so the average matches).

    A candidate that successive halving may continue trains only the first `total` of T = `horizon` x
    `total` steps of its cosine, so that it stops part-way down, where its continuation goes on: `start`
    (a continuation's) is the fraction of lr its parent stopped at (`cosine_lr` with peak 1); it then decays from
    start*lr to 0 over T with no second warmup (its parent's optimiser moments are loaded), one schedule
    across the rungs, as one run alone has, instead of a restart from the top per rung."""
    lr = float(hp["opt_lr"])
    if hp.get("opt_lr_schedule", "cosine") == "constant":
        return 0.5 * lr
    return cosine_lr(step, total, lr, float(hp["opt_lr_warmup_ratio"]), horizon=horizon, start=start)


def cosine_lr(step: int, total: int, peak: float, warmup_ratio: float, *, horizon: float = 1.0,
              start: float | None = None) -> float:
    """The cosine schedule of peak `peak` at `step` (see `lr_at`); with `peak` 1, the fraction of the peak
    a continuation starts from."""
    length = total if horizon == 1.0 else max(1.0, horizon * total)
    if start is not None:
        return 0.5 * (start * peak) * (1 + math.cos(math.pi * min(1.0, step / max(1.0, length))))
    warmup = int(warmup_ratio * length)
    if step < warmup:
        return peak / 100 + (peak - peak / 100) * step / max(1, warmup)
    progress = (step - warmup) / max(1, length - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, progress)))
