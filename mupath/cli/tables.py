"""Readable summary tables."""
from __future__ import annotations

from typing import Any

from rich.table import Table


def fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def status_table(system: Any, times: dict[str, float] | None = None) -> Table:
    """Per task: test accuracy, parameters owned / shared, components reused from other tasks."""
    table = Table(title=f"mupath system at {system.path}")
    for col in ("task", "test acc", "params owned", "params shared", "accounted", "reused comps",
                "reused from", "layers", "adapters"):
        table.add_column(col, justify="left" if col in ("task", "reused from") else "right")
    if times is not None:
        table.add_column("training time", justify="right")
    for st in system.status():
        row = [st.task, "-" if st.test_accuracy is None else f"{st.test_accuracy:.4f}",
               fmt_params(st.params_owned), fmt_params(st.params_shared), fmt_params(st.accounted_params),
               str(st.reused_components), ", ".join(st.reused_from) or "-", str(st.num_layers),
               str(st.adapters)]
        if times is not None:
            row.append(f"{times.get(st.task, 0.0):.0f}s")
        table.add_row(*row)
    return table
