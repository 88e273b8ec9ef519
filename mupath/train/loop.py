"""The training loop of one candidate (nanoGPT style: a plain loop, no framework). Only the
parameters of components the candidate owns reach the optimiser; shared components are frozen and
never written. The best validation snapshot is kept (early-stopping selection, as in the reference)."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from mupath.model.path_model import PathModel
from mupath.train.cache import Prefix
from mupath.train.evaluate import EVAL_BATCH, accuracy_of, logits_of
from mupath.train.optim import lr_at, make_optimizer
from mupath.train.pipeline import augment, batch_iterator, has_augmentation, to_model_input


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps_per_validation: int
    validations: int
    batch_size: int
    seed: int
    clip_norm: float = 1.0
    #: `time.perf_counter()` after which no training step starts (the interval then ends with its
    #: validation): a wall-clock bound for baselines given the evolution's time; None: no bound
    deadline: float | None = None
    #: snapshot the optimiser's state with the best weights (`TrainOutcome.best_optimizer`): only a
    #: candidate whose survivors may continue (successive halving) needs it
    keep_optimizer: bool = False
    #: train for about this many seconds of training steps, at most `steps_per_validation` x `validations`
    #: steps: the step count is sized from the rate of the first steps (`StepPlan.timed`), so that a
    #: candidate whose steps cost less trains more of them (successive halving's rungs are equal in time)
    #: and one that needs fewer ends early; None: the fixed count
    seconds: float | None = None


#: a candidate trained for `TrainConfig.seconds` times this many steps, after its first (untimed: first
#: calls allocate), to size its step count, and sizes it again from the rate so far at 2x, 4x, 8x, ... that
#: many (the first steps' rate can be off: caches warm, a machine's load moves; sized last at 193 steps, a
#: 586-step survivor ran 7% slower than planned, into its deadline before its schedule ended)
RATE_STEPS = 3


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many steps a candidate trains and after which its validations run (evenly spaced; the last
    after the last step)."""

    total: int
    validations: int
    cap: int = 0          #: a timed plan's most steps (0: `total`)

    def __post_init__(self) -> None:
        if not self.cap:
            object.__setattr__(self, "cap", self.total)

    def end(self, interval: int) -> int:
        """The step count at which validation `interval` (0-based) runs."""
        return math.ceil(self.total * (interval + 1) / self.validations)

    def timed(self, seconds: float, step_seconds: float, done: int = RATE_STEPS + 1) -> StepPlan:
        """The plan of a candidate given `seconds` of training at `step_seconds` per step: at most its
        `cap` (the configured steps), at least one step per validation and the `done` steps taken."""
        steps = int(seconds / step_seconds) if step_seconds > 0 else self.cap
        return StepPlan(min(self.cap, max(steps, self.validations, done)), self.validations, self.cap)


@dataclasses.dataclass
class TrainOutcome:
    improved: bool
    quality: float
    score: float
    evals: list[float]
    best_state: dict[str, dict[str, torch.Tensor]] | None
    steps: int
    images: int
    train_time: float
    eval_time: float
    failure: str | None = None
    #: the optimiser's state when the best snapshot was taken (`optimizer_tensors`): what a continuation
    #: of this candidate starts from (successive halving)
    best_optimizer: dict[str, torch.Tensor] | None = None


def train_path(model: nn.Module, owned: dict[str, nn.Module], hp: dict, cfg: TrainConfig,
               train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
               score_of: Callable[[float], float], bar: float,
               on_step: Callable[[int, int], None] | None = None, prefix: Prefix | None = None,
               optimizer_state: dict[str, torch.Tensor] | None = None) -> TrainOutcome:
    """Train `owned` components of `model` and keep the best snapshot whose score reaches `bar`.

    `val_x` is already preprocessed (float, the path's image size). `score_of(quality)` applies the
    parameter penalty; `bar` is the parent's score for a same-task parent, else -inf. With `prefix`
    (frozen-prefix activations, no augmentation) only the suffix of the path runs. `optimizer_state`:
    see `_optimizer`."""
    (train_x, train_y), (val_x, val_y) = train, val
    image_size = int(hp["ds_image_size"])
    optimizer, params = _optimizer(owned, hp, optimizer_state)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = batch_iterator(train_x.shape[0], cfg.batch_size, gen)
    plan = StepPlan(cfg.steps_per_validation * cfg.validations, cfg.validations)
    augmenting = has_augmentation(hp)
    evals: list[float] = []
    best: dict[str, dict[str, torch.Tensor]] | None = None
    best_optimizer: dict[str, torch.Tensor] | None = None
    best_quality, best_score = float("-inf"), bar
    train_time = eval_time = 0.0
    step = 0
    rate_started = 0.0
    model.eval()  # no dropout anywhere; eval mode keeps any norm statistics fixed
    for interval in range(cfg.validations):
        t0 = time.perf_counter()
        if cfg.deadline is not None and t0 >= cfg.deadline and evals:
            break
        while step < plan.end(interval):
            if cfg.deadline is not None and time.perf_counter() >= cfg.deadline:
                break
            if step == 1:
                rate_started = time.perf_counter()
            idx = next(batches)
            logits = _batch_logits(model, train_x, idx, hp, gen=gen if augmenting else None, prefix=prefix)
            bad = _optimise(optimizer, params, logits, train_y[idx], lr_at(step, plan.total, hp), cfg.clip_norm)
            if bad is not None:
                return TrainOutcome(False, best_quality, best_score, evals, None, step,
                                    step * cfg.batch_size, train_time + time.perf_counter() - t0, eval_time,
                                    failure=f"loss became {bad} at step {step}")
            step += 1
            if cfg.seconds is not None and _resize_at(step):
                plan = plan.timed(cfg.seconds, (time.perf_counter() - rate_started) / (step - 1), step)
            if on_step is not None:
                on_step(step, plan.total)
        t1 = time.perf_counter()
        quality = accuracy_of(_val_logits(model, val_x, image_size, prefix), val_y)
        eval_time += time.perf_counter() - t1
        train_time += t1 - t0
        evals.append(quality)
        score = score_of(quality)
        if score >= best_score and math.isfinite(score):
            best_score, best_quality = score, quality
            best = _snapshot(owned)
            best_optimizer = optimizer_tensors(optimizer, params) if cfg.keep_optimizer else None
    return TrainOutcome(best is not None, best_quality, best_score, evals, best, step,
                        step * cfg.batch_size, train_time, eval_time, best_optimizer=best_optimizer)


def _resize_at(step: int) -> bool:
    """Does a timed candidate size its step count again after `step` steps (RATE_STEPS + 1, then 2x, 4x,
    ... RATE_STEPS more)?"""
    timed = step - 1
    while timed > RATE_STEPS and timed % 2 == 0:
        timed //= 2
    return timed == RATE_STEPS


def _optimise(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], logits: torch.Tensor,
              labels: torch.Tensor, lr: float, clip_norm: float) -> float | None:
    """One optimiser step on the batch's cross-entropy at learning rate `lr` (gradients clipped to
    `clip_norm`); the loss when it is not finite (then no step is taken), else None."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = nn.functional.cross_entropy(logits, labels)
    if not torch.isfinite(loss):
        return float(loss.item())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return None


def _optimizer(owned: dict[str, nn.Module], hp: dict,
               state: dict[str, torch.Tensor] | None) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """The optimiser of the owned parameters (made trainable), in their order. `state`: a parent's
    `best_optimizer`, loaded when it fits these parameters (a continuation of a trained candidate
    keeps its moments; the schedule restarts, warm-up included)."""
    params = [p for m in owned.values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = make_optimizer(params, hp)
    if state:
        load_optimizer_tensors(optimizer, params, state)
    return optimizer, params


def optimizer_tensors(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as flat CPU tensors `<parameter index>.<name>` (AdamW's
    step and moments, SGD's momentum buffer), in the order of `params`."""
    out: dict[str, torch.Tensor] = {}
    for i, p in enumerate(params):
        for name, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                out[f"{i}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                           tensors: dict[str, torch.Tensor]) -> bool:
    """Give `optimizer` the state `optimizer_tensors` saved, when it was saved for parameters of these
    shapes (else leave it fresh and say so with False)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(params):
            return False
        state.setdefault(int(index), {})[name] = value
    for i, entries in state.items():
        shaped = [v for n, v in entries.items() if v.dim() > 0]
        if any(v.shape != params[i].shape for v in shaped):
            return False
    for i, entries in state.items():
        optimizer.state[params[i]] = {n: v.to(params[i].device).clone() if v.dim() else v.clone()
                                      for n, v in entries.items()}     # a step count stays on the CPU
    return True


def _batch_logits(model: nn.Module, train_x: torch.Tensor, idx: torch.Tensor, hp: dict, *,
                  gen: torch.Generator | None, prefix: Prefix | None) -> torch.Tensor:
    """A training batch's logits: from the cached frozen prefix, or from the images (augmented with
    `gen`'s draws when given)."""
    if prefix is not None:
        return _suffix_logits(model, prefix.train[idx], prefix.start)
    x = to_model_input(train_x[idx], int(hp["ds_image_size"]))
    if gen is not None:
        x = augment(x, hp, gen)
    return model(x)


def _snapshot(owned: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the owned tensors, on the CPU: commits and checks run there."""
    return {cid: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}
            for cid, m in owned.items()}


def _suffix_logits(model: nn.Module, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """Logits from cached frozen-prefix activations: only a PathModel, whose body the cache cut, runs
    from the middle."""
    assert isinstance(model, PathModel), "a frozen-prefix cache needs a PathModel"
    return model.head_logits(model.forward_tokens(tokens, start))


@torch.inference_mode()
def _val_logits(model: nn.Module, val_x: torch.Tensor, image_size: int, prefix: Prefix | None) -> torch.Tensor:
    if prefix is None:
        return logits_of(model, val_x, image_size, preprocessed=True)
    out = [_suffix_logits(model, prefix.val[i:i + EVAL_BATCH], prefix.start)
           for i in range(0, prefix.val.shape[0], EVAL_BATCH)]
    return torch.cat(out)
