"""Tasks and their sources: validated image-classification data in one canonical form.

`load_task` turns a built-in name or a path into a `Task`; `Task.from_arrays` does the same for
in-memory arrays; `task_to_arrays` / `task_from_arrays_dict` flatten a task for storage.
"""
from mupath.data.builtin import BUILTIN_TASKS
from mupath.data.catalogue import CATALOGUE, stream_tasks
from mupath.data.sources import load_task
from mupath.data.task import SPLIT_NAMES, Split, Task, limit_train, task_from_arrays_dict, task_to_arrays

__all__ = ["BUILTIN_TASKS", "CATALOGUE", "stream_tasks", "SPLIT_NAMES", "Split", "Task", "limit_train", "load_task",
           "task_from_arrays_dict", "task_to_arrays"]
