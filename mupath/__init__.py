"""mupath: grow one multitask image-classification model (a timm root model cut into shareable
components) task after task by evolution (µ2Net, Gesmundo & Dean 2022)."""
from mupath.data import Task, load_task, stream_tasks
from mupath.errors import ConfigError, DataError, ForgettingError, MupathError, StoreError
from mupath.export import load_exported
from mupath.system import System

__version__ = "0.1.0"
__all__ = ["System", "Task", "load_task", "stream_tasks", "MupathError", "DataError", "ConfigError", "StoreError",
           "ForgettingError", "load_exported", "__version__"]
