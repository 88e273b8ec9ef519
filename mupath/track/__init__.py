"""Experiment trackers for the evolve loop (the `Tracker` interface of `mupath.search.tracking`):
TensorBoard event files by default (`mupath.track.tensorboard`), an MLflow logger for those who use
MLflow (`mupath.track.mlflow`, optional extra). A tracker writes one run's events, and a run's id is
known only once it started (or resumed), so `evolve` takes a `TrackerFactory` and calls it then;
`make_tracker` is the default one, decided by the `log` / `log_dir` settings."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from mupath.errors import ConfigError
from mupath.search.settings import EvolveSettings
from mupath.search.tracking import CandidateEvent, CommitEvent, NullTracker, Tracker
from mupath.store.store import Store
from mupath.track.series import Axes

__all__ = ["LOGS", "TrackerFactory", "log_root", "run_log_dir", "check_log_root", "axes_of", "make_tracker",
           "open_tracker", "GuardedTracker"]

#: the default log folder, inside the store (`mupath verify` looks only at blobs/ and scratch/)
LOGS = "logs"

#: (store, settings, run id) -> the run's tracker, called once the run is started or resumed
TrackerFactory = Callable[[Store, EvolveSettings, str], Tracker]


def log_root(store_folder: Path, settings: EvolveSettings) -> Path:
    """Where the runs' log folders go: `log_dir`, else STORE/logs, so a store carries its history."""
    return Path(settings.log_dir) if settings.log_dir else Path(store_folder) / LOGS


def run_log_dir(store_folder: Path, settings: EvolveSettings, run_id: str) -> Path:
    """One folder per run, named by its run id: a resumed run keeps the id, so it appends there."""
    return log_root(store_folder, settings) / run_id


def check_log_root(store_folder: Path, settings: EvolveSettings) -> None:
    """Create the log folder now, so that an unwritable `log_dir` is a one-line error before the run
    starts instead of a failure after its first candidates trained."""
    if not settings.log:
        return
    root = log_root(store_folder, settings)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".mupath-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write TensorBoard logs to {root} ({exc.strerror or exc}); choose another "
                          "--log-dir or pass --no-log") from None


def axes_of(store: Store, settings: EvolveSettings, run_id: str) -> Axes:
    """The run's axes; the commits it already holds (a resume) offset the commit axis."""
    return Axes.of(settings, first_step=len(store.manifest.commits(run_id)))


def make_tracker(store: Store, settings: EvolveSettings, run_id: str) -> Tracker:
    """The run's tracker from its settings: nothing with `log=False`, else TensorBoard event files in
    `run_log_dir(...)`."""
    if not settings.log:
        return NullTracker()
    from mupath.track.tensorboard import TensorBoardTracker
    return TensorBoardTracker(run_log_dir(store.folder, settings, run_id), axes_of(store, settings, run_id))


def open_tracker(given: Tracker | TrackerFactory | None, store: Store, settings: EvolveSettings,
                 run_id: str) -> Tracker:
    """The tracker of a started run: `given` itself when it is one, what it makes when it is a
    factory (e.g. `mupath.track.mlflow.mlflow_tracker(...)`), the settings' one when it is None."""
    if given is None:
        tracker = make_tracker(store, settings, run_id)
    elif hasattr(given, "committed"):
        tracker = cast(Tracker, given)
    else:
        tracker = given(store, settings, run_id)
    return tracker if isinstance(tracker, NullTracker) else GuardedTracker(tracker)


class GuardedTracker:
    """A tracker that never takes the search down: hours of search are worth more than their plots, so
    the first error of a tracker (a full disk, an unreachable MLflow server, a bug in a user's tracker)
    is one warning and the tracker is off for the rest of the run. Ctrl-C and SIGTERM still stop the
    run (they are not `Exception`s)."""

    def __init__(self, inner: Tracker) -> None:
        self.inner = inner
        self.failure: str | None = None

    def candidate(self, event: CandidateEvent) -> None:
        self._call(self.inner.candidate, event)

    def committed(self, event: CommitEvent) -> None:
        self._call(self.inner.committed, event)

    def close(self) -> None:
        """Closed even after a failure (its files and threads are released), never raising."""
        failed, self.failure = self.failure, None
        self._call(self.inner.close)
        self.failure = failed or self.failure

    def _call(self, method: Callable[..., None], *args: Any) -> None:
        if self.failure is not None:
            return
        try:
            method(*args)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            warnings.warn(f"the {type(self.inner).__name__} failed and is off for the rest of this run "
                          f"(the search goes on): {self.failure}", RuntimeWarning, stacklevel=2)
