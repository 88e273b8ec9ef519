"""What every prediction route shares, whatever its wire format (the v1 multipart routes of app.py, the
Open Inference Protocol routes of inference_protocol.py): the server's state, the check that the asked
tasks are served, and the one path from a request's bytes to the batcher's answer. One path, so that
every route answers with the same bits, is batched with every other route's requests, and counts in
the same metrics."""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np

from mupath.serve.batching import Batcher, JobAnswer
from mupath.serve.config import ServeConfig
from mupath.serve.errors import ServeError
from mupath.serve.metrics import Metrics
from mupath.serve.registry import Registry, Version

COMMIT_HEADER = "x-mupath-commit"   #: every answer names the store commit whose paths answered
Read = TypeVar("Read")


@dataclasses.dataclass(frozen=True)
class ServerState:
    """`app.state.mupath`: what the routes of one app read."""

    config: ServeConfig
    registry: Registry
    batcher: Batcher
    metrics: Metrics


def resolve(version: Version, names: list[str]) -> list[str]:
    """The asked tasks, or a 404 naming the served ones."""
    if not names:
        raise ServeError(404, "no task has been evolved yet in this store; nothing to serve")
    for name in names:
        if name not in version.tasks:
            why = "has not been evolved yet" if name in version.pending else "is unknown"
            raise ServeError(404, f"task '{name}' {why}; served tasks: {', '.join(version.tasks) or 'none yet'}")
    return names


async def answer_request(state: ServerState, tasks: list[str], read: Callable[[], Awaitable[Read]],
                         images: Callable[[Read], Sequence[np.ndarray]]) -> tuple[Read, JobAnswer]:
    """Read and decode a request (`read`), queue its `images` for `tasks` on the batcher and await the
    answer. The request is announced before it is read, so a batch may wait for it while its bytes
    arrive; a request that fails to read withdraws, and the batch stops waiting for it."""
    state.batcher.announce()
    try:
        request = await read()
        parts = list(images(request))
    except BaseException:
        state.batcher.withdraw()
        raise
    answer: JobAnswer = await asyncio.wrap_future(state.batcher.submit(tasks, parts))
    for a in answer.answers:
        state.metrics.task_requests.labels(a.task).inc()
        state.metrics.task_images.labels(a.task).inc(len(a.class_ids))
    return request, answer


def commit_headers(answer: JobAnswer) -> dict[str, str]:
    return {COMMIT_HEADER: str(answer.commit_id)}
