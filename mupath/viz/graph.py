"""The system graph as a grid: one row per task, one column per slot of the widest path; each cell is
coloured by the task that created the component the row's path uses there (grey = the root), and
components used by several tasks are outlined and labelled with how many tasks share them."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from mupath.model.components import slot_order
from mupath.store.atomic import atomic_output
from mupath.store.records import ROOT_TASK


def draw_system_graph(system, out: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    retained = system.manifest.retained()
    comps = system.manifest.components()
    tasks = [t for t in system.tasks if t in retained]
    slots = sorted({s for t in tasks for s in retained[t].components}, key=slot_order)
    users = Counter(cid for t in tasks for cid in set(retained[t].components.values()))
    palette = plt.get_cmap("tab20")
    colour = {ROOT_TASK: (0.8, 0.8, 0.8, 1.0)}
    for i, t in enumerate(system.tasks):
        colour[t] = palette(i % 20)
    fig_w = max(6.0, 0.55 * len(slots) + 3)
    fig_h = max(2.5, 0.45 * len(tasks) + 1.8)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    for row, task in enumerate(tasks):
        path = retained[task].components
        for col, slot in enumerate(slots):
            cid = path.get(slot)
            if cid is None:
                continue
            creator = comps[cid].task
            shared = users[cid] > 1
            ax.add_patch(Rectangle((col, row), 0.92, 0.85, facecolor=colour.get(creator, "white"),
                                   edgecolor="black" if shared else "none", linewidth=1.4 if shared else 0))
            if shared:
                ax.text(col + 0.46, row + 0.42, str(users[cid]), ha="center", va="center", fontsize=7)
    ax.set_xlim(0, len(slots))
    ax.set_ylim(len(tasks), 0)
    ax.set_xticks([i + 0.46 for i in range(len(slots))])
    ax.set_xticklabels([s.replace("_", " ") for s in slots], rotation=60, ha="right", fontsize=8)
    ax.set_yticks([i + 0.42 for i in range(len(tasks))])
    ax.set_yticklabels(tasks, fontsize=9)
    ax.set_title("Components per task (colour = task that trained it; outlined = shared, with user count)",
                 fontsize=9)
    handles = [Patch(color=colour[ROOT_TASK], label="root (frozen)")]
    handles += [Patch(color=colour[t], label=t) for t in tasks]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    out = Path(out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    return out
