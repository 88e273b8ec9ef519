"""Rich progress bars for the evolution loop (implements search.evolve.Progress)."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mupath.runtime.jobs import CandidateResult


class RichProgress:
    def __init__(self, console: Console, note: str | None = None) -> None:
        self.console = console
        self.note = note          #: said once, when the first task starts (a bad input fails before it)
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, transient=False)
        self.search_bar: Any = None
        self.step_bar: Any = None

    def __enter__(self) -> RichProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def task_started(self, task: str, iteration: int, candidates: int) -> None:
        if self.note:
            self.console.print(self.note)
            self.note = None
        if self.search_bar is not None:
            self.bars.remove_task(self.search_bar)
        self.search_bar = self.bars.add_task(f"[bold]{task}[/] iteration {iteration + 1}: candidates",
                                             total=candidates)

    def rung_started(self, rung: int, candidates: int, train_seconds: float | None, seconds_left: float) -> None:
        """Successive halving (--time-budget): each rung's candidates, their training time (once measured)
        and the time left."""
        what = "candidates" if rung == 0 else "survivors"
        each = f", {train_seconds:.0f}s of training each" if train_seconds else ""
        self.console.print(f"  rung {rung}: {candidates} {what}{each}, {seconds_left:.0f}s left")
        if self.search_bar is not None:
            task = next(t for t in self.bars.tasks if t.id == self.search_bar)
            total = candidates if rung == 0 else (task.total or 0) + candidates
            self.bars.update(self.search_bar, total=max(total, task.completed))

    def candidate_step(self, index: int, step: int, total: int) -> None:
        if self.step_bar is None:
            self.step_bar = self.bars.add_task("  training steps", total=total)
        if step == 1:
            self.bars.reset(self.step_bar, total=total, description=f"  candidate {index + 1}: steps")
        self.bars.update(self.step_bar, completed=step)

    def candidate_done(self, result: CandidateResult) -> None:
        self.bars.advance(self.search_bar)
        if result.failure:
            self.console.print(f"  [yellow]candidate dropped[/]: {result.failure}")

    def task_done(self, entry: Any) -> None:
        verb = "committed" if entry.changed else "kept (no child beat it)"
        self.console.print(f"  [green]{entry.task}[/] {verb}: val {entry.val_accuracy:.3f}, "
                           f"test {entry.test_accuracy:.3f}, {entry.improved}/{entry.candidates} candidates "
                           f"improved, {entry.wall_time:.0f}s")
