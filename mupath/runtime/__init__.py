"""Where candidates run: executors (in-process, process pool, Ray) and the worker that trains one job.
The Ray executor lives in `mupath.runtime.ray_executor` and is imported only when asked for, so
importing mupath never imports ray."""
from mupath.runtime.executors import Executor, InProcessExecutor, ProcessPoolExecutor, make_executor
from mupath.runtime.worker import materialise, run_job, task_tensors

__all__ = ["Executor", "InProcessExecutor", "ProcessPoolExecutor", "make_executor", "run_job",
           "materialise", "task_tensors"]
