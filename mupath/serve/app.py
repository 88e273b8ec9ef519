"""The FastAPI app: the routes of the serving contract (docs/design.md, "Serving contract").

`create_app(store_folder, config)` opens the store read-only and builds the first version before it
returns (a bad store fails here, not on the first request); the reload and batch threads run while
the app's lifespan does. Other routes can be added to the returned app; `app.state.mupath` is the
`ServerState` (registry, batcher, metrics, config) they can read."""
from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mupath.serve.answering import ServerState, answer_request, commit_headers, resolve
from mupath.serve.batching import Batcher, JobAnswer, TaskAnswer
from mupath.serve.config import ServeConfig
from mupath.serve.errors import ServeError
from mupath.serve.images import decode_part, usable_images
from mupath.serve.inference_protocol import router as inference_protocol_router
from mupath.serve.metrics import Metrics
from mupath.serve.middleware import BearerAuth, BodyLimit, RequestMetrics
from mupath.serve.page import router as page_router
from mupath.serve.registry import Registry, ServedTask
from mupath.store.store import CHECK_THREADS

FILES_HELP = "one or more images (PNG, JPEG, BMP, GIF, WebP) or .npy arrays (N, H, W[, C]), each a part named 'files'"
__all__ = ["ServerState", "create_app"]


def create_app(store_folder: str | os.PathLike, config: ServeConfig | None = None) -> FastAPI:
    """The server of the store at `store_folder` (opened read-only)."""
    config = config or ServeConfig()
    metrics = Metrics()
    registry = Registry(Path(store_folder), config,
                        on_swap=lambda v, seconds: metrics.observe_swap(v.commit_id, seconds))
    metrics.commit.set(registry.current.commit_id)
    batcher = Batcher(lambda: registry.current, config.max_wait_ms, config.max_batch, metrics.observe_batch)
    state = ServerState(config, registry, batcher, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(CHECK_THREADS)     # the thread count every reference logit is computed with
        batcher.start()
        registry.start()
        try:
            yield
        finally:
            batcher.stop()
            registry.stop()

    # FastAPIOffline: the same FastAPI app, but /docs and /redoc load Swagger UI and ReDoc from files
    # in the fastapi-offline package (served under /static-offline-docs), not from a CDN: offline
    # users get a working page.
    app = FastAPIOffline(title="mupath", version="1", lifespan=lifespan,
                         description=f"Every task of the mupath store {registry.folder.name} (docs/serving.md).")
    app.state.mupath = state
    _add_error_handlers(app)
    _add_routes(app, state)
    app.include_router(page_router)           # GET / (the page), /v1/graph, /v1/tasks/{task}/history
    app.include_router(inference_protocol_router)   # /v2/...: the Open Inference Protocol (KServe v2, Triton)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.token:
        app.add_middleware(BearerAuth, token=config.token)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal is `{"error": "one line"}`."""
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}; see /docs"
        return JSONResponse({"error": " ".join(detail.split())}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"invalid request: {where} {first.get('msg', 'is invalid')}".strip()},
                            status_code=422)


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/healthz", summary="Liveness (never needs the token)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/tasks", summary="Every served task: classes, accuracy, parameters, reuse, version")
    async def tasks() -> dict[str, object]:
        version = state.registry.current
        return {"tasks": [_task_entry(t) for t in version.tasks.values()], "commit": version.commit_id,
                "not_evolved": list(version.pending)}

    @app.post("/v1/tasks/{task}/predict", summary="Class ids, names and probabilities for one task")
    async def predict_task(request: Request, task: str,
                           files: list[UploadFile] | None = File(None, description=FILES_HELP)) -> JSONResponse:
        names = resolve(state.registry.current, [task])
        answer = await _predict(request, state, names, files)
        return _respond(answer, _task_object(answer.answers[0]))

    @app.post("/v1/predict", summary="The same images answered by several tasks (shared prefixes once)")
    async def predict_many(request: Request,
                           tasks: str | None = Query(None, description="comma-separated tasks (default: all)"),
                           files: list[UploadFile] | None = File(None, description=FILES_HELP)) -> JSONResponse:
        version = state.registry.current
        asked = [t.strip() for t in (tasks or "").split(",") if t.strip()]
        names = resolve(version, list(dict.fromkeys(asked)) if asked else list(version.tasks))
        answer = await _predict(request, state, names, files)
        return _respond(answer, {"results": {a.task: _task_object(a) for a in answer.answers}})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(state.metrics.text(), media_type=CONTENT_TYPE_LATEST)


async def _predict(request: Request, state: ServerState, tasks: list[str],
                   files: list[UploadFile] | None) -> JobAnswer:
    if not (request.headers.get("content-type") or "").lower().startswith("multipart/form-data"):
        raise ServeError(415, "send the images as multipart/form-data, one or more parts named 'files'")
    if not files:
        raise ServeError(422, "no images: send one or more parts named 'files' (PNG/JPEG images or .npy arrays)")
    uploads = files

    async def read() -> list[np.ndarray]:
        datas = [await f.read() for f in uploads]
        return await run_in_threadpool(_decode_all, datas, ", ".join(tasks), state.config.max_pixels)
    _, answer = await answer_request(state, tasks, read, lambda parts: parts)
    return answer


def _decode_all(datas: list[bytes], label: str, max_pixels: int) -> list[np.ndarray]:
    """Decode and validate every part (on a worker thread: large pictures never block the loop)."""
    return [usable_images(decode_part(data, i, max_pixels), i, label) for i, data in enumerate(datas, 1)]


def _respond(answer: JobAnswer, body: dict[str, object]) -> JSONResponse:
    return JSONResponse(body, headers=commit_headers(answer))


def _task_object(a: TaskAnswer) -> dict[str, object]:
    """The contract's answer of one task: per image, class id, name and probability per class."""
    probs = a.probabilities.tolist()
    return {"task": a.task, "version": a.version,
            "predictions": [{"class_id": int(c), "class_name": a.class_names[int(c)],
                             "probabilities": dict(zip(a.class_names, p))}
                            for c, p in zip(a.class_ids.tolist(), probs)]}


def _task_entry(t: ServedTask) -> dict[str, object]:
    info = t.info
    return {"name": t.name, "classes": list(t.class_names), "version": t.version,
            "test_accuracy": info.test_accuracy, "params_owned": info.params_owned,
            "params_shared": info.params_shared, "accounted_params": info.accounted_params,
            "reused_components": info.reused_components, "reused_from": list(info.reused_from),
            "grown_from": info.grown_from, "image_shape": list(info.image_shape), "image_size": t.image_size}
