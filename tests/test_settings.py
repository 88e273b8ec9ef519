"""`EvolveSettings` is the one source of truth for the evolve settings: the `mupath evolve` options
(names, defaults, help) and the table in docs/settings.md are generated from its fields, and this
checks that the three agree. Building settings never probes the machine; `check_environment` does."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from mupath.cli.main import app
from mupath.errors import ConfigError
from mupath.search import settings as settings_module
from mupath.search.settings import (
    DOC_BEGIN,
    DOC_END,
    SETTING_FIELDS,
    EvolveSettings,
    cli_flag,
    default_of,
    make_settings,
    settings_markdown,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
CONTRACT = ("--tasks", "--iterations", "--candidates", "--generations", "--workers")   # docs/design.md


def _evolve_params() -> dict[str, Any]:
    """The evolve command's parameters as typer builds them (typer vendors its own click)."""
    command: Any = typer.main.get_command(app)
    return {p.name: p for p in command.commands["evolve"].params if p.name}


@pytest.mark.parametrize("name", list(SETTING_FIELDS))
def test_every_setting_is_an_evolve_option_with_the_field_s_default_and_help(name):
    param = _evolve_params()[name]
    assert param.param_type_name == "option"
    default = default_of(name)
    assert param.default == ([] if isinstance(default, dict) else default)
    assert param.help == SETTING_FIELDS[name].metadata["help"]
    assert cli_flag(name).split("/")[0] in param.opts


def test_evolve_has_no_option_that_is_not_a_setting():
    assert set(_evolve_params()) == {"store", "tasks", *SETTING_FIELDS}


def test_evolve_help_names_the_public_options():
    result = CliRunner().invoke(app, ["evolve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in (*CONTRACT, *(cli_flag(n).split("/")[0] for n in SETTING_FIELDS)):
        assert flag in result.output, flag


def test_every_field_has_one_line_help():
    for name, field in SETTING_FIELDS.items():
        assert field.metadata["help"] and "\n" not in field.metadata["help"], name


def test_docs_table_is_generated_from_the_fields():
    text = DOC.read_text()
    assert DOC_BEGIN in text and DOC_END in text
    block = DOC_BEGIN + text.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0] + DOC_END
    assert block == settings_markdown(), "docs/settings.md is stale: run `make docs-settings`"
    for name in SETTING_FIELDS:
        assert f"| `{name}` |" in block


def test_write_markdown_keeps_the_prose_around_the_block(tmp_path):
    doc = tmp_path / "s.md"
    doc.write_text(f"# head\n\n{DOC_BEGIN}\nold\n{DOC_END}\n\ntail\n")
    assert settings_module.write_markdown(doc)
    text = doc.read_text()
    assert text.startswith("# head\n\n") and text.endswith("\n\ntail\n") and "old" not in text
    assert not settings_module.write_markdown(doc)             # a second run changes nothing


def test_defaults_of_the_dataclass_are_the_documented_ones():
    plain = EvolveSettings()
    for name in SETTING_FIELDS:
        assert getattr(plain, name) == default_of(name)
    assert dataclasses.asdict(plain)["hparams"] == {} and plain.device == "cpu"


def test_a_gpu_or_ray_setting_is_built_without_probing_the_machine(monkeypatch):
    import mupath.runtime.ray_executor as ray_executor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(ray_executor, "ray_available", lambda: False)
    monkeypatch.setitem(sys.modules, "ray", None)
    gpu = EvolveSettings(device="cuda")
    ray = EvolveSettings(executor="ray", workers=2)
    assert gpu.device == "cuda" and ray.uses_ray
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        gpu.check_environment()
    with pytest.raises(ConfigError, match=r"pip install 'mupath\[ray\]'"):
        ray.check_environment()
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        make_settings(device="cuda")                          # what System.evolve builds is checked
    EvolveSettings(device="auto").check_environment()         # auto falls back to the CPU


@pytest.mark.parametrize("kwargs, needle", [
    (dict(candidates=0), "candidates must be a positive integer"),
    (dict(workers=True), "workers must be a positive integer"),
    (dict(scale_factor=1.5), "scale_factor must be in (0, 1]"),
    (dict(check_scope="some"), "check_scope must be auto, all or shared"),
    (dict(clone_root="never"), "clone_root must be"),
    (dict(seed_order="random"), "seed_order must be"),
    (dict(executor="dask"), "executor must be"),
    (dict(executor="inprocess", workers=2), "one candidate at a time"),
    (dict(ray_address=" "), "ray_address must be"),
    (dict(executor="process", ray_ship_blobs=True), "ray executor only"),
    (dict(executor="ray", device="cuda:1"), "Ray picks each candidate's GPU"),
    (dict(device="gpu"), "device must be one of"),
    (dict(threads_per_worker=-1), "threads_per_worker must be >= 0"),
    (dict(cache_mb=-1), "cache_mb must be >= 0"),
    (dict(hparams=[]), "hparams must be a dict"),
    (dict(ranges={"opt_lr": {1, 2}}), "is not a plain value"),
])
def test_value_checks_stay_in_construction(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        EvolveSettings(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)
