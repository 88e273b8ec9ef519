"""Pictures of a system: which tasks use which components."""
from mupath.viz.graph import draw_system_graph

__all__ = ["draw_system_graph"]
