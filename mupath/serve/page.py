"""The web page at `/` and the two JSON answers it needs that `/v1/tasks` lacks (docs/page.md).

`GET /` is one self-contained HTML document (its CSS and JS, read from `mupath/serve/static/`, are
inlined): a browser navigating to the page cannot send `Authorization`, so the page itself carries no
data and is open; everything it shows comes from token-guarded JSON routes, which it calls with the
token it asked for. Its Content-Security-Policy allows exactly those inlined bytes (by hash) and
same-origin requests: no CDN, no build step, nothing else runs.

`GET /v1/graph` and `GET /v1/tasks/{task}/history` are computed from the registry's *current*
version (the one a predict answer names), with component records and commit logs read from a
read-only snapshot opened for the purpose and cached per commit: a page answer and a predict answer
always describe the same retained paths."""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import threading
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from mupath.model.components import slot_order
from mupath.serve.errors import ServeError
from mupath.serve.registry import Version
from mupath.store.records import ROOT_TASK, ComponentRecord
from mupath.store.store import Store

router = APIRouter()
HISTORY_CACHE = 64          #: (task, commit) answers kept; the page asks for each task once per commit


@functools.lru_cache(maxsize=1)
def page_document() -> tuple[str, str]:
    """The page with its CSS and JS inlined, and the Content-Security-Policy that allows just them."""
    static = resources.files("mupath.serve") / "static"
    html = (static / "index.html").read_text("utf-8")
    css = (static / "page.css").read_text("utf-8")
    js = (static / "page.js").read_text("utf-8")
    html = html.replace("/*PAGE_CSS*/", css).replace("/*PAGE_JS*/", js)

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"
    policy = (f"default-src 'none'; script-src {digest(js)}; style-src {digest(css)}; img-src 'self' blob: data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, policy


class PageData:
    """Per-app cache of what the page routes answer, keyed by the served commit. Component records
    are kept once seen: a later commit may drop a component the still-served version uses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graph: tuple[int, dict[str, Any]] | None = None
        self._history: dict[tuple[str, int], dict[str, Any]] = {}
        self._components: dict[str, ComponentRecord] = {}

    def graph(self, folder: Any, version: Version) -> dict[str, Any]:
        with self._lock:
            if self._graph is None or self._graph[0] != version.commit_id:
                if not all(c in self._components for t in version.tasks.values() for c in t.slot_ids.values()):
                    with contextlib.closing(Store.open(folder, read_only=True)) as store:
                        self._components.update(store.snapshot().components)
                self._graph = (version.commit_id, graph_of(version, self._components))
            return self._graph[1]

    def history(self, folder: Any, version: Version, task: str) -> dict[str, Any]:
        key = (task, version.commit_id)
        with self._lock:
            if key not in self._history:
                with contextlib.closing(Store.open(folder, read_only=True)) as store:
                    commits = [c for c in store.manifest.commits(task=task) if c["id"] <= version.commit_id]
                if len(self._history) >= HISTORY_CACHE:
                    self._history.clear()
                self._history[key] = {"task": task, "version": version.tasks[task].version,
                                      "commit": version.commit_id, "commits": [commit_entry(c) for c in commits]}
            return self._history[key]


def graph_of(version: Version, known: dict[str, ComponentRecord]) -> dict[str, Any]:
    """Components of the served paths, each with the task that trained it (`"root"` for the root's)
    and the tasks using it; a component used by two or more tasks is shared."""
    users: dict[str, list[str]] = {}
    slots: dict[str, str] = {}
    for name, task in version.tasks.items():
        for slot, cid in task.slot_ids.items():
            users.setdefault(cid, []).append(name)
            slots[cid] = slot
    components = []
    for cid, used_by in users.items():
        record = known.get(cid)
        creator = None if record is None else ("root" if record.task == ROOT_TASK else record.task)
        components.append({"id": cid, "creator": creator, "kind": record.kind if record else None,
                           "slot": slots[cid], "order": list(slot_order(slots[cid])),
                           "params": record.num_params if record else None,
                           "users": used_by, "shared": len(used_by) > 1})
    tasks = [{"name": name, "version": t.version,
              "path": [{"slot": slot, "component": t.slot_ids[slot]} for slot in sorted(t.slot_ids, key=slot_order)]}
             for name, t in version.tasks.items()]
    return {"commit": version.commit_id, "tasks": tasks, "components": components}


def commit_entry(commit: dict[str, Any]) -> dict[str, Any]:
    """One commit of a task's search as the page shows it: what was tried and what it scored."""
    info = commit.get("info") or {}
    return {"id": commit["id"], "iteration": commit["iteration"], "time": commit["time"],
            "path": commit["path_id"], "test_accuracy": commit["test_accuracy"],
            "score": info.get("score"), "candidates": info.get("candidates"), "changed": info.get("changed"),
            "improved": info.get("improved"), "wall_time": info.get("wall_time"),
            "tried": [{k: v for k, v in t.items() if k != "device"} for t in info.get("tried", [])]}


def _state(request: Request) -> tuple[Any, Version, PageData]:
    state = request.app.state.mupath
    data = getattr(request.app.state, "mupath_page", None)
    if data is None:
        data = request.app.state.mupath_page = PageData()
    return state.registry.folder, state.registry.current, data


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    """The page (open: it holds no data; see the module docstring)."""
    html, policy = page_document()
    return HTMLResponse(html, headers={"content-security-policy": policy, "cache-control": "no-cache",
                                       "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"})


@router.get("/v1/graph", summary="The served paths' components: who trained each, who uses it")
async def graph(request: Request) -> JSONResponse:
    folder, version, data = _state(request)
    body = await run_in_threadpool(data.graph, folder, version)
    return JSONResponse(body, headers={"x-mupath-commit": str(version.commit_id)})


@router.get("/v1/tasks/{task}/history", summary="A task's commits: candidates tried, mutations, scores")
async def history(request: Request, task: str) -> JSONResponse:
    folder, version, data = _state(request)
    if task not in version.tasks:
        why = "has not been evolved yet" if task in version.pending else "is unknown"
        raise ServeError(404, f"task '{task}' {why}; served tasks: {', '.join(version.tasks) or 'none yet'}")
    body = await run_in_threadpool(data.history, folder, version, task)
    return JSONResponse(body, headers={"x-mupath-commit": str(version.commit_id)})
