"""TensorBoard logs of an evolve (`mupath.track`), read back with tensorboard's own event reader: each
candidate's validation curve, the candidates' and the retained path's scores per task, the system's
size against its number of tasks, one text entry per commit naming its mutations; a resumed run
appends to its folder; `--no-log` writes nothing; `mupath verify` does not mind the logs."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_ROOT, TINY_SETTINGS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from typer.testing import CliRunner

from mupath import System
from mupath.cli.main import app
from mupath.errors import ConfigError
from mupath.search.settings import EvolveSettings
from mupath.search.tracking import CommitEvent
from mupath.store.verify import verify_store
from mupath.track.series import commit_text, mutation_line

#: two tasks, two task iterations, two candidates each: every kind of tag, in seconds
GROW = dict(TINY_SETTINGS, generations=1, candidates=2, iterations=2, steps_per_validation=10, val_limit=100)
TASKS = ("digits", "parity")


def _read(folder: Path) -> EventAccumulator:
    """Every event file of a run folder (a resumed run has several), nothing sampled away."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _texts(acc: EventAccumulator, tag: str = "commits") -> list[tuple[int, str]]:
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
            for e in acc.Tensors(f"{tag}/text_summary")]


def _run_folder(root: Path) -> Path:
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def grown(tmp_path_factory, digits_small, parity_task) -> tuple[System, Any]:
    system = System.create(tmp_path_factory.mktemp("tracked") / "store", **TINY_ROOT)
    system.add_task(digits_small)
    system.add_task(parity_task)
    report = system.evolve(list(TASKS), **GROW)
    return system, report


def test_evolve_writes_one_run_folder_inside_the_store(grown):
    system, report = grown
    folder = system.path / "logs" / report.run_id
    assert _run_folder(system.path / "logs") == folder
    assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir())


def test_each_candidate_has_its_validation_curve(grown):
    system, report = grown
    acc = _read(system.path / "logs" / report.run_id)
    steps = [(k + 1) * GROW["steps_per_validation"] for k in range(GROW["validations"])]
    for task in TASKS:
        for commit in system.history(task):
            for c, tried in enumerate(commit.info.tried):
                curve = _scalars(acc, f"candidate/{task}/it{commit.iteration}-gen0-c{c}/val_accuracy")
                assert [s for s, _ in curve] == steps
                assert max(v for _, v in curve) == pytest.approx(tried.best_val)


def test_candidates_scores_and_sizes_match_the_search_log(grown):
    system, report = grown
    acc = _read(system.path / "logs" / report.run_id)
    for task in TASKS:
        tried = [t for c in system.history(task) for t in c.info.tried]
        assert [v for _, v in _scalars(acc, f"search/{task}/candidate_best_val")] == \
            pytest.approx([t.best_val for t in tried])
        assert _scalars(acc, f"search/{task}/candidate_score") == \
            [(n, pytest.approx(t.score)) for n, t in enumerate(tried) if t.entered]
        assert [v for _, v in _scalars(acc, f"search/{task}/candidate_owned_params")] == \
            [t.owned_params for t in tried]
        assert [v for _, v in _scalars(acc, f"search/{task}/candidate_accounted_params")] == \
            pytest.approx([t.accounted_params for t in tried])


def test_retained_score_per_task_over_iterations(grown):
    system, report = grown
    acc = _read(system.path / "logs" / report.run_id)
    for task in TASKS:
        commits = system.history(task)
        assert _scalars(acc, f"retained/{task}/score") == \
            [(c.iteration, pytest.approx(c.info.score)) for c in commits]
        assert _scalars(acc, f"retained/{task}/test_accuracy") == \
            [(c.iteration, pytest.approx(c.test_accuracy)) for c in commits]


def test_system_size_against_the_number_of_tasks(grown):
    system, report = grown
    acc = _read(system.path / "logs" / report.run_id)
    sizes = _scalars(acc, "system/params_by_tasks")
    assert [s for s, _ in sizes] == [1, 2, 2, 2]           # two tasks, then two revisits
    assert sizes[0][1] < sizes[1][1]                       # the second task added components
    total = sum(c.num_params for c in system.store.snapshot().components.values())
    assert sizes[-1][1] == total
    assert [s for s, _ in _scalars(acc, "system/params")] == [1, 2, 3, 4]
    assert [v for _, v in _scalars(acc, "system/tasks")] == [1, 2, 2, 2]


def test_one_text_entry_per_commit_names_its_mutations(grown):
    system, report = grown
    texts = _texts(_read(system.path / "logs" / report.run_id))
    assert [s for s, _ in texts] == [1, 2, 3, 4]
    order = [(i, t) for i in range(GROW["iterations"]) for t in TASKS]
    for (_, text), (iteration, task) in zip(texts, order):
        commit = [c for c in system.history(task) if c.iteration == iteration][0]
        assert text.startswith(f"**{task}**, iteration {iteration}: path `{commit.path_id}`")
        kept = [t for t in commit.info.tried if t.path == commit.path_id]
        for key, value in (kept[0].mutations if kept else {}).items():   # an unchanged path tried nothing
            assert mutation_line(key, value) in text


def test_mupath_verify_does_not_mind_the_logs(grown):
    system, _ = grown
    report = verify_store(system.store)
    assert not report.serious, [p.message for p in report.serious]
    assert not [p for p in report.problems if "logs" in p.message or p.kind == "stray-file"]
    assert report.checked == list(TASKS)


def test_commit_text_renders_each_kind_of_mutation():
    event = CommitEvent("digits", 1, 3, "p1", True, 0.5, 0.6, 0.55, 100.0,
                        {"cloned": ["block_0", "norm"], "adapters_added": [1], "opt_lr": [0.001, 0.002],
                         "odd": {"a": 1}}, 4, 2, 1000, 2, 1.0)
    text = commit_text(event)
    assert "cloned `block_0`, `norm`" in text and "added adapter 1" in text
    assert "`opt_lr` 0.001 → 0.002" in text and '`odd`: {"a": 1}' in text


def test_resumed_run_appends_to_its_folder(tmp_path, digits_small, parity_task):
    """Interrupted before its second task, the run resumes under the same id: a second event file in
    the same folder, whose commit continues the first one's axis."""
    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(digits_small)
    system.add_task(parity_task)
    settings = dict(TINY_SETTINGS, generations=1, candidates=1, log_dir=tmp_path / "tb")

    class StopBeforeParity:
        def task_started(self, task: str, iteration: int, candidates: int) -> None:
            if task == "parity":
                raise KeyboardInterrupt

        def candidate_step(self, *args: Any) -> None: ...
        def candidate_done(self, *args: Any) -> None: ...
        def task_done(self, *args: Any) -> None: ...

    with pytest.raises(KeyboardInterrupt):
        system.evolve(list(TASKS), progress=StopBeforeParity(), **settings)
    report = system.evolve(list(TASKS), **settings)
    assert report.resumed and not (system.path / "logs").exists()
    folder = _run_folder(tmp_path / "tb")
    assert folder.name == report.run_id
    assert len([p for p in folder.iterdir() if p.name.startswith("events.out")]) == 2
    acc = _read(folder)
    assert [(s, t.split(",")[0]) for s, t in _texts(acc)] == [(1, "**digits**"), (2, "**parity**")]
    assert [s for s, _ in _scalars(acc, "system/params_by_tasks")] == [1, 2]


QUICK = ["--generations", "1", "--candidates", "1", "--steps-per-validation", "5", "--validations", "1",
         "--batch-size", "32", "--val-limit", "100"]


def test_no_log_writes_nothing(tmp_path, digits_small):
    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(digits_small)
    result = CliRunner().invoke(app, ["evolve", str(tmp_path / "store"), "--no-log", *QUICK])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "store" / "logs").exists() and "TensorBoard" not in result.output
    assert not [p for p in tmp_path.rglob("*") if "tfevents" in p.name]


def test_cli_log_dir_says_where_the_logs_are(tmp_path, digits_small):
    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(digits_small)
    result = CliRunner().invoke(app, ["evolve", str(tmp_path / "store"), "--log-dir", str(tmp_path / "tb"), *QUICK],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    folder = _run_folder(tmp_path / "tb")
    assert f"TensorBoard logs: {folder}" in " ".join(result.output.split())
    assert _scalars(_read(folder), "system/tasks") == [(1, 1.0)] and not (tmp_path / "store" / "logs").exists()


def test_a_failing_tracker_is_one_warning_and_the_search_goes_on(tmp_path, digits_small):
    class Broken:
        closed = False

        def candidate(self, event: Any) -> None:
            raise OSError("No space left on device")

        def committed(self, event: Any) -> None:
            raise AssertionError("switched off after the first failure, never called")

        def close(self) -> None:
            Broken.closed = True

    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(digits_small)
    with pytest.warns(RuntimeWarning, match="Broken failed and is off .*No space left on device"):
        report = system.evolve(["digits"], tracker=Broken(), **dict(TINY_SETTINGS, generations=1, candidates=1))
    assert [t.task for t in report.tasks] == ["digits"] and Broken.closed


def test_an_unwritable_log_dir_is_one_line_before_the_run(tmp_path, digits_small):
    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(digits_small)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write TensorBoard logs to .*--no-log") as info:
        system.evolve(["digits"], log_dir=tmp_path / "file" / "logs", **TINY_SETTINGS)
    assert "\n" not in str(info.value)
    assert system.store.manifest.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_log_settings_change_no_choice_of_the_search(tmp_path):
    base = EvolveSettings()
    assert EvolveSettings(log=False).resume_key(["a"]) == base.resume_key(["a"])
    assert EvolveSettings(log_dir=str(tmp_path)).resume_key(["a"]) == base.resume_key(["a"])
    assert EvolveSettings(log_dir=tmp_path).log_dir == str(tmp_path)      # a Path is kept as text (JSON)
    assert dataclasses.asdict(EvolveSettings(log_dir=tmp_path))["log_dir"] == str(tmp_path)
    with pytest.raises(ConfigError, match="logging is off"):
        EvolveSettings(log=False, log_dir="x")


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed "
                    "(optional extra: pip install 'mupath[mlflow]')")
def test_mlflow_tracker_logs_the_same_points_to_a_local_file_store(tmp_path, digits_small, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")      # MLflow 3 refuses a file store by default

    from mupath.track.mlflow import RUN_TAG, mlflow_tracker
    uri = (tmp_path / "mlruns").as_uri()
    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(digits_small)
    report = system.evolve(["digits"], tracker=mlflow_tracker(uri, experiment="tiny"),
                           **dict(TINY_SETTINGS, generations=1, candidates=2, validations=2))
    assert not (system.path / "logs").exists()                 # the given tracker replaces the default one
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.data.tags[RUN_TAG] == report.run_id and run.info.status == "FINISHED"
    assert run.data.params["candidates"] == "2"
    tried = system.history("digits")[0].info.tried
    best = client.get_metric_history(run.info.run_id, "search/digits/candidate_best_val")
    assert [m.value for m in sorted(best, key=lambda m: m.step)] == pytest.approx([t.best_val for t in tried])
    curve = client.get_metric_history(run.info.run_id, "candidate/digits/it0-gen0-c1/val_accuracy")
    assert sorted(m.step for m in curve) == [TINY_SETTINGS["steps_per_validation"] * k for k in (1, 2)]
    (size,) = client.get_metric_history(run.info.run_id, "system/params_by_tasks")
    assert size.step == 1 and size.value == sum(c.num_params for c in system.store.snapshot().components.values())
    (commit,) = client.list_artifacts(run.info.run_id, "commits")
    assert commit.path == "commits/00001-digits.md"
