"""TensorBoard event files of one evolve run (`torch.utils.tensorboard.SummaryWriter`), so a search
that runs for hours can be plotted while it runs: `tensorboard --logdir STORE/logs`. What is plotted
comes from `mupath.track.series` (tags and axes: docs/tracking.md)."""
from __future__ import annotations

from pathlib import Path

from mupath.errors import ConfigError
from mupath.search.tracking import CandidateEvent, CommitEvent
from mupath.track.series import Axes, Point, candidate_points, commit_points, commit_text, failure_text

#: seconds between two flushes of pending events (SummaryWriter's default of 120 s is too slow to watch)
FLUSH_SECS = 10


class TensorBoardTracker:
    """Writes a run's candidates and commits as TensorBoard scalars and text into `folder` (a new
    event file per tracker: a resumed run adds one next to its first)."""

    def __init__(self, folder: Path, axes: Axes) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: a run without logs skips it
        self.folder = Path(folder)
        self.axes = axes
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(self.folder), flush_secs=FLUSH_SECS)
        except OSError as exc:
            raise ConfigError(f"cannot write TensorBoard logs to {self.folder} ({exc.strerror or exc}); "
                              "choose another --log-dir or pass --no-log") from None

    def candidate(self, event: CandidateEvent) -> None:
        """Its curve, score and size; a failure as a text entry of the task (`failures/TASK`)."""
        self._write(candidate_points(event, self.axes))
        if event.result.failure is not None:
            self.writer.add_text(f"failures/{event.task}", failure_text(event, self.axes),
                                 self.axes.candidate_number(event))

    def committed(self, event: CommitEvent) -> None:
        """The retained path and the system's size, and the commit's text (`commits`)."""
        self._write(commit_points(event, self.axes))
        self.writer.add_text("commits", commit_text(event), self.axes.first_step + event.step)
        self.writer.flush()             # a commit is rare and the thing one waits for: show it now

    def close(self) -> None:
        self.writer.close()

    def _write(self, points: list[Point]) -> None:
        for p in points:
            self.writer.add_scalar(p.tag, p.value, p.step)
