"""Successive halving under a wall-clock budget (issue 32): how many candidates a task iteration can
afford and how long each rung trains, from step times measured in this very iteration.

The budget model (Hyperband's, each rung costing about the same), in seconds: rung 0 trains n0
candidates r0 seconds each (r0: what the first candidates' first validation interval took, s0 =
`steps_per_validation` steps); rung k keeps the best
ceil(n / eta) of rung k-1 and trains each survivor eta^k * r0 seconds more, starting from its own trained
weights (an unmutated child of it: the µ2Net inheritance), and the last survivor trains for all the time
that is left. Rungs are equal in time, not in steps: a candidate whose steps cost less (a frozen bottom
needs no backward pass there, and a small task's is served by the activation cache) trains more steps
and is ranked on what it reached in the same seconds, which is what the budget buys. With c = r0 plus a
candidate's measured fixed cost, rung k costs about n0 * c, so K rungs cost K * n0 * c; n0 is the
largest count that fits what is left after the first wave and the commit's reserve. Every rung is
re-planned from the costs measured so far, so a slower machine gets fewer candidates, never a late
finish: a rung that no longer fits is cut to the survivors that do, or skipped."""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

from mupath.runtime.jobs import CandidateResult

#: fraction of the budget kept free for what no rung measures (scheduling, logging, the CLI's tables); small, since
#: every candidate also stops at the deadline less the reserve (`Budget.deadline`)
SLACK = 0.02
#: the first wave's recipes stop once the task iteration has spent this share of its budget (a short budget
#: runs the best-ranked recipes and leaves the rest of its time to the survivors, as Hyperband's rung 0
#: costs about 1/K of its bracket)
FIRST_WAVE_SHARE = 1 / 3
#: the first rung's size when nothing has been measured yet
MIN_FIRST_RUNG = 4
#: nor more than this (beyond it a task iteration on a fast machine is better spent on longer rungs)
MAX_FIRST_RUNG = 64
#: the last survivor's steps are capped at eta fixed-schedule candidates' or at this many passes over its task's
#: training images, whichever is more (`survivor_cap`). What overfits is repetition: in the demo, without a
#: cap, mnist's survivor trained 1,229 steps (22 passes over its 3,600 images; test 0.974 and 0.976 against 0.988
#: and 0.982 capped) and digits' 943 (47 passes, test 0.964), while fashion_mnist's 900 capped steps are one
#: pass over its 54,000 and ended 31-56 s before its 180. 16 passes of mnist is the fixed cap (900 steps)
SURVIVOR_PASSES = 16
#: the first wave is ranked at equal steps, not equal seconds, once the budget affords at least this many
#: passes over the task's training images at the first recipe's pace (`ranks_by_steps`). Then any recipe's
#: survivor may see its images many times, so what it can learn (its capacity) decides, not how fast it
#: steps: on font_digits (2,160 training images, 90 s: about 34 passes) the every-block recipes, the
#: baselines' shape, ranked last at a third of the others' steps and were never continued (the evolved task
#: 0.2-0.3 points under the baselines over five runs). Under a pass or two (fashion_mnist's 54,000 at 60-180
#: s: 0.5-2 passes) a step saved is an image seen: ranked at equal steps, the every-block adapters won the
#: demo's fashion_mnist and trained ~400 steps where the top half's 743 reached 0.5-0.9 points more
#: (d6da16e). The threshold sits between the two (mnist at 60 s: 10-13 passes, digits 17-35)
STEPS_RANKING_PASSES = 4.0


@dataclasses.dataclass(frozen=True)
class Rung:
    """One rung's plan: its index, how many candidates, the seconds each trains (beyond what it inherited;
    a candidate whose steps cost less trains more of them) and the seconds the rung is expected to take."""

    index: int
    candidates: int
    train_seconds: float
    seconds: float


def rung_counts(n0: int, eta: int) -> list[int]:
    """Candidates per rung: n0, ceil(n0/eta), ... down to 1."""
    counts = [max(1, n0)]
    while counts[-1] > 1:
        counts.append(math.ceil(counts[-1] / eta))
    return counts


def per_step_seconds(results: Sequence[CandidateResult]) -> float:
    """Median seconds per training step of the candidates that trained (the steps alone: what a longer
    candidate pays per extra step)."""
    rates = [r.train_time / r.steps for r in results if r.steps > 0 and r.train_time > 0]
    return statistics.median(rates) if rates else 0.0


def candidate_overhead(results: Sequence[CandidateResult]) -> float:
    """Median seconds a candidate spends besides its training steps (build, cache fill, validations,
    snapshot): what every candidate of a rung pays once, however long it trains."""
    rest = fixed_costs(results)
    return statistics.median(rest) if rest else 0.0


def fixed_costs(results: Sequence[CandidateResult], *, without_fills: bool = False) -> list[float]:
    """Each trained candidate's seconds besides its training steps (`without_fills`: less its cache fill)."""
    return [max(0.0, r.wall_time - r.train_time - (r.fill_time if without_fills else 0.0))
            for r in results if r.steps > 0]


def least_overhead(results: Sequence[CandidateResult]) -> float:
    """The least fixed cost of a candidate that trained, its cache fill left out: what the last survivor,
    which builds like its ancestor and finds the entry its ancestor filled (a timed candidate never fills
    one of its own: `runtime.worker.fills_cache`), is expected to pay. With the fill counted, a rung 0 of
    one candidate left the fill's seconds unspent (mnist at 60 s: 5.1 s planned, 0.3 s paid)."""
    rest = fixed_costs(results, without_fills=True)
    return min(rest) if rest else 0.0


def survivor_cap(fixed_steps: int, train_rows: int, batch_size: int) -> int:
    """The last survivor's most steps: `fixed_steps` (eta fixed-schedule candidates'), or SURVIVOR_PASSES
    passes over the task's `train_rows` training images at `batch_size` where that is more: a large task's
    survivor trains for all its time, a small task's stops before it repeats its images past what helped."""
    return max(fixed_steps, math.ceil(SURVIVOR_PASSES * train_rows / max(1, batch_size)))


def affordable_passes(budget_seconds: float, step_seconds: float, train_rows: int, batch_size: int) -> float:
    """Passes over `train_rows` training images that `budget_seconds` of steps at `step_seconds` each (of
    `batch_size` images) would make; infinite when nothing was measured or the task is empty."""
    if step_seconds <= 0 or train_rows <= 0:
        return math.inf
    return budget_seconds / step_seconds * batch_size / train_rows


def ranks_by_steps(budget_seconds: float, step_seconds: float, train_rows: int, batch_size: int) -> bool:
    """Whether the first wave is ranked at equal steps (see STEPS_RANKING_PASSES): the budget affords that
    many passes at the first recipe's measured pace."""
    return affordable_passes(budget_seconds, step_seconds, train_rows, batch_size) >= STEPS_RANKING_PASSES


def first_rung_size(seconds_left: float, candidate_seconds: float, eta: int, workers: int) -> int:
    """The largest n0 whose whole schedule (every rung at about n0 candidate-costs, `workers` at a
    time) fits `seconds_left`, at most MAX_FIRST_RUNG; 1 when none does (the first wave then is the whole
    rung 0, and its best takes the time that is left: a short budget is better spent training one
    survivor longer than on more first-rung candidates that nothing can continue)."""
    if candidate_seconds <= 0:
        return MIN_FIRST_RUNG
    best = 1
    for n0 in range(1, MAX_FIRST_RUNG + 1):
        cost = sum(math.ceil(n / workers) * candidate_seconds * eta ** k
                   for k, n in enumerate(rung_counts(n0, eta)))
        if cost <= seconds_left:
            best = n0
    return best


def next_rung(index: int, survivors: int, base_seconds: float, eta: int, *, seconds_left: float, workers: int,
              overhead: float = 0.0) -> Rung | None:
    """Rung `index` for up to `survivors` candidates: eta^index * `base_seconds` of training each (plus
    `overhead` seconds per candidate), cut to the survivors that fit `seconds_left`. A rung of one
    survivor is the last: it trains for all the time that is left. None when not even one fits a tenth
    of the rung's training."""
    train = base_seconds * eta ** index
    for n in range(survivors, 1, -1):
        seconds = math.ceil(n / workers) * (train + overhead)
        if seconds <= seconds_left:
            return Rung(index, n, train, seconds)
    if seconds_left - overhead >= train / 10:
        return Rung(index, 1, seconds_left - overhead, seconds_left)
    return None
