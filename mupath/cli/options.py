"""`mupath evolve` options built from `EvolveSettings`' fields, so the CLI's defaults and help are
the dataclass's and cannot drift from the API or the docs (`tests/test_settings.py` checks it)."""
from __future__ import annotations

from typing import Any

import typer

from mupath.search.settings import SETTING_FIELDS, cli_flag, default_of


def setting_option(name: str) -> Any:
    """The typer option of setting `name`: its default and help, spelled `cli_flag(name)`. The dict
    settings (hparams, ranges) become repeatable KEY=VALUE options whose default is no entries."""
    field = SETTING_FIELDS[name]
    default = default_of(name)
    if isinstance(default, dict):
        default = []
    flag = cli_flag(name)
    declared = [flag] if field.metadata["flag"] else []
    return typer.Option(default, *declared, help=field.metadata["help"])
