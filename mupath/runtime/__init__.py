"""Where candidates run: executors (in-process, process pool) and the worker that trains one job."""
from mupath.runtime.executors import Executor, InProcessExecutor, ProcessPoolExecutor, make_executor
from mupath.runtime.worker import run_job, materialise, task_tensors

__all__ = ["Executor", "InProcessExecutor", "ProcessPoolExecutor", "make_executor", "run_job",
           "materialise", "task_tensors"]
