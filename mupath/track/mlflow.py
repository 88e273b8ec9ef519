"""An MLflow logger of evolve runs, for teams whose experiments live in MLflow (optional extra:
`pip install 'mupath[mlflow]'`). It writes the same points as the TensorBoard logs
(`mupath.track.series`): metrics under the same tags and steps, a markdown artifact per commit.

    system.evolve(tracker=mlflow_tracker("file:///tmp/mlruns"))

One MLflow run per mupath run, tagged `mupath.run_id`: a resumed mupath run logs into the MLflow run
it started. It uses an `MlflowClient` (never the global active run), so it leaves the caller's own
MLflow state alone."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from mupath.errors import ConfigError
from mupath.search.settings import EvolveSettings
from mupath.search.tracking import CandidateEvent, CommitEvent
from mupath.store.store import Store
from mupath.track import TrackerFactory, axes_of
from mupath.track.series import Axes, Point, candidate_points, commit_points, commit_text, failure_text

PIP_HINT = "pip install 'mupath[mlflow]'"
RUN_TAG = "mupath.run_id"


def _client(tracking_uri: str | None) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(f"the MLflow tracker needs mlflow, which is not installed: {PIP_HINT}") from None
    return MlflowClient(tracking_uri)


class MlflowTracker:
    """Logs one run's candidates and commits to the MLflow run `mlflow_run_id` through `client`."""

    def __init__(self, client: Any, mlflow_run_id: str, axes: Axes) -> None:
        self.client, self.run_id, self.axes = client, mlflow_run_id, axes

    def candidate(self, event: CandidateEvent) -> None:
        self._log(candidate_points(event, self.axes))
        if event.result.failure is not None:
            number = self.axes.candidate_number(event)
            self.client.log_text(self.run_id, failure_text(event, self.axes),
                                 f"failures/{event.task}/{number:05d}.md")

    def committed(self, event: CommitEvent) -> None:
        self._log(commit_points(event, self.axes))
        step = self.axes.first_step + event.step
        self.client.log_text(self.run_id, commit_text(event), f"commits/{step:05d}-{event.task}.md")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)

    def _log(self, points: list[Point]) -> None:
        """One request for an event's points (a remote tracking server is not asked once per point)."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        if points:
            self.client.log_batch(self.run_id, metrics=[Metric(p.tag, p.value, now, p.step) for p in points])


def mlflow_tracker(tracking_uri: str | None = None, experiment: str = "mupath") -> TrackerFactory:
    """A factory for `System.evolve(tracker=...)`: once the run has its id, find its MLflow run (a
    resume) or start one in `experiment`, with the run's settings as parameters."""
    client = _client(tracking_uri)          # mlflow missing: fail at once, before a run starts

    def make(store: Store, settings: EvolveSettings, run_id: str) -> MlflowTracker:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=1)
        if runs:
            mlflow_run_id = runs[0].info.run_id
            client.update_run(mlflow_run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=f"mupath-{run_id}",
                                    tags={RUN_TAG: run_id, "mupath.store": str(store.folder)})
            mlflow_run_id = run.info.run_id
            from mlflow.entities import Param
            client.log_batch(mlflow_run_id, params=[Param(key, str(value)[:500])
                                                    for key, value in dataclasses.asdict(settings).items()])
        return MlflowTracker(client, mlflow_run_id, axes_of(store, settings, run_id))
    return make
