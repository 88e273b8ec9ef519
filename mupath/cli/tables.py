"""Readable summary tables."""
from __future__ import annotations

from typing import Any

from rich.table import Table


def fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


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


def mutation_summary(mutations: dict[str, Any]) -> str:
    """A candidate's mutations in one short line: 'clone block_0, patch_embed; +adapter 1; opt_lr 0.001->0.002'."""
    parts = []
    if mutations.get("cloned"):
        parts.append("clone " + ", ".join(mutations["cloned"]))
    if mutations.get("adapters_added"):
        parts.append("+adapter " + ", ".join(str(i) for i in mutations["adapters_added"]))
    parts += [f"{k} {v[0]}->{v[1]}" for k, v in sorted(mutations.items())
              if k not in ("cloned", "adapters_added") and isinstance(v, list) and len(v) == 2]
    return "; ".join(parts) or "no mutation"


def tried_status(entry: dict[str, Any]) -> str:
    """What became of a candidate: kept by the commit, kept in the population (beat its bar but lost),
    below its bar (never beat its parent's score), or failed (with the start of the reason)."""
    if entry.get("retained"):
        return "retained"
    if entry.get("failure") and not entry.get("entered"):
        return "failed: " + str(entry["failure"])[:60]
    return "in population" if entry.get("entered") else "below its bar"


def history_tables(system: Any, task: str) -> list[Table]:
    """One table per commit of `task`: every candidate its search tried, what it changed from its parent,
    its best validation accuracy, parameters and score, and which one the task kept."""
    out = []
    for c in system.history(task):
        info = c["info"]
        title = (f"{task}: iteration {c['iteration']}, run {c['run_id']}, test acc {c['test_accuracy']:.4f}, "
                 f"score {info.get('score', float('nan')):.4f}")
        devices = sorted({str(e["device"]) for e in info.get("tried") or [] if e.get("device")})
        if devices:                          # logs before the device setting do not say
            title += f", trained on {', '.join(devices)}"
        table = Table(title=title)
        for col in ("#", "gen", "parent task", "mutations", "best val acc", "owned", "accounted", "score", "outcome"):
            table.add_column(col, justify="left" if col in ("parent task", "mutations", "outcome") else "right")
        tried = info.get("tried")
        if tried is None:
            table.caption = "this commit predates the search log: its candidates were not recorded"
        elif not any(e.get("retained") for e in tried):
            table.caption = "no candidate beat the path the task already had: it kept that path"
        for i, e in enumerate(tried or []):
            best_val = e.get("best_val", e.get("quality"))      # logs before best_val: the quality only
            table.add_row(str(i), str(e["generation"]), str(e.get("parent_task") or "-"),
                          mutation_summary({**(e.get("data") or {}), **(e.get("mutations") or {})}),
                          "-" if best_val is None else f"{best_val:.4f}",
                          fmt_params(e.get("owned_params", 0)), fmt_params(e.get("accounted_params", 0)),
                          "-" if e.get("score") is None else f"{e['score']:.4f}", tried_status(e))
        out.append(table)
    return out
