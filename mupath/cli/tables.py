"""Readable summary tables."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from mupath.store.log import CommitRecord, TriedCandidate

if TYPE_CHECKING:
    from mupath.system import System


def fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def status_table(system: System, times: dict[str, float] | None = None) -> Table:
    """Per task: test accuracy, parameters owned / shared, components reused from other tasks and the task
    whose path it was grown from (its modules copied: reuse that shares no component)."""
    table = Table(title=f"mupath system at {system.path}")
    for col in ("task", "test acc", "params owned", "params shared", "accounted", "reused comps",
                "reused from", "grown from", "layers", "adapters", "ssf", "lora"):
        table.add_column(col, justify="left" if col in ("task", "reused from", "grown from") else "right")
    if times is not None:
        table.add_column("training time", justify="right")
    for st in system.status():
        row = [st.task, "-" if st.test_accuracy is None else f"{st.test_accuracy:.4f}",
               fmt_params(st.params_owned), fmt_params(st.params_shared), fmt_params(st.accounted_params),
               str(st.reused_components), ", ".join(st.reused_from) or "-", st.grown_from or "-",
               str(st.num_layers),
               str(st.adapters), str(st.scale_shifts), str(st.deltas)]
        if times is not None:
            row.append(f"{times.get(st.task, 0.0):.0f}s")
        table.add_row(*row)
    return table


#: list-valued mutation records: module kinds inserted or removed at these block indices
LIST_MUTATIONS = {f"{kind}s_{verb}": f"{'+' if verb == 'added' else '-'}{kind}"
                  for kind in ("adapter", "ssf", "lora") for verb in ("added", "removed")}


def mutation_summary(mutations: dict[str, Any]) -> str:
    """A candidate's mutations in one short line:
    'clone block_0, patch_embed; +adapter 1; +lora 0, 1; opt_lr 0.001->0.002'."""
    parts = []
    if mutations.get("cloned"):
        parts.append("clone " + ", ".join(mutations["cloned"]))
    for key, label in LIST_MUTATIONS.items():
        if mutations.get(key):
            parts.append(f"{label} " + ", ".join(str(i) for i in mutations[key]))
    parts += [f"{k} {v[0]}->{v[1]}" for k, v in sorted(mutations.items())
              if k != "cloned" and k not in LIST_MUTATIONS and isinstance(v, list) and len(v) == 2]
    return "; ".join(parts) or "no mutation"


def tried_status(entry: TriedCandidate) -> str:
    """What became of a candidate: kept by the commit, kept in the population (beat its bar but lost),
    below its bar (never beat its parent's score), or failed (with the start of the reason)."""
    if entry.retained:
        return "retained"
    if entry.failure and not entry.entered:
        return "failed: " + str(entry.failure)[:60]
    return "in population" if entry.entered else "below its bar"


def history_tables(system: System, task: str) -> list[Table]:
    """One table per commit of `task`: every candidate its search tried, what it changed from its parent,
    its best validation accuracy, parameters and score, and which one the task kept."""
    system.task_record(task)
    return [_commit_table(task, c) for c in system.store.manifest.commit_records(task=task)]


def _commit_table(task: str, c: CommitRecord) -> Table:
    info = c.info
    score = float("nan") if info.score is None else info.score
    title = (f"{task}: iteration {c.iteration}, run {c.run_id}, test acc {c.test_accuracy or 0.0:.4f}, "
             f"score {score:.4f}")
    if info.devices:                          # logs before the device setting do not say
        title += f", trained on {', '.join(info.devices)}"
    table = Table(title=title)
    for col in ("#", "gen", "parent task", "mutations", "best val acc", "owned", "accounted", "score", "outcome"):
        table.add_column(col, justify="left" if col in ("parent task", "mutations", "outcome") else "right")
    if info.tried is None:
        table.caption = "this commit predates the search log: its candidates were not recorded"
    elif not any(e.retained for e in info.tried):
        table.caption = "no candidate beat the path the task already had: it kept that path"
    for i, e in enumerate(info.tried or ()):
        table.add_row(str(i), str(e.generation), str(e.parent_task or "-"),
                      mutation_summary({**e.data, **e.mutations}),
                      "-" if e.best_val is None else f"{e.best_val:.4f}",
                      fmt_params(e.owned_params), fmt_params(e.accounted_params),
                      "-" if e.score is None else f"{e.score:.4f}", tried_status(e))
    return table
