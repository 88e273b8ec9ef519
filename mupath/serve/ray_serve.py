"""The same server past one machine: the FastAPI app of `create_app` behind a Ray Serve deployment
(`serve.ingress`), N replicas (docs/page.md, "Ray Serve").

Each replica builds its own app from the store folder when it starts (the builder runs on the
replica, so models are never pickled from the driver): its own read-only registry, hot reload and
cross-task batcher. Ray Serve's HTTP proxy takes a request and its router picks a replica by "power
of two choices" (two random replicas, preferring the proxy's node, the one with the shorter queue
wins); requests on different replicas are never batched together, so `max_ongoing_requests` (how
many requests a replica holds at once, the most one batch can gather) defaults to `max_batch`. Every
route, answer, error and the token are the app's own: the contract does not change.

Use: `mupath serve STORE --ray --replicas N`, or `serve.run(mupath_application(STORE, config, N))` on a
cluster of your own. On several machines the store folder must be readable at the same path on every
node (a shared file system) and mupath installed on each."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from mupath.errors import ConfigError
from mupath.serve.app import create_app
from mupath.serve.config import ServeConfig
from mupath.serve.middleware import Message, Receive, Scope, Send
from mupath.store.store import Store

APP_NAME = "mupath"
REPLICA_HEADER = b"x-mupath-replica"


class ReplicaHeader:
    """Names the replica that answered (`x-mupath-replica`): which replica a request reached is
    otherwise invisible to a client, and the test checks that both replicas answer."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(message)
        await self.app(scope, receive, named)


def build_replica_app(store: str, config: ServeConfig) -> FastAPI:
    """Runs on each replica as it starts: the app of `create_app`, naming its replica."""
    from ray import serve
    app = create_app(store, config)
    app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
    return app


def mupath_application(store: str | Path, config: ServeConfig | None = None, replicas: int = 1, *,
                       num_cpus: float = 1.0, max_ongoing_requests: int | None = None) -> Any:
    """A bound Ray Serve application of `replicas` replicas serving the store (pass it to `serve.run`).
    `num_cpus`: what Ray reserves per replica (its torch threads are the app's own setting)."""
    from ray import serve
    config = config or ServeConfig()
    if replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {replicas}")
    folder = str(Path(store).expanduser().resolve())
    Store.open(folder, read_only=True).close()          # a missing store fails here, not on every replica

    class MupathReplica:
        """One replica: Ray Serve runs the app's lifespan (reload thread, batcher) inside it."""

    def builder() -> FastAPI:
        # A plain function, which Ray Serve calls on each replica (a functools.partial it would take
        # for an ASGI app and call once per request).
        return build_replica_app(folder, config)

    ingress = serve.ingress(builder)(MupathReplica)
    deployment = serve.deployment(name=APP_NAME, num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
                                  max_ongoing_requests=max_ongoing_requests or config.max_batch)(ingress)
    return deployment.bind()


def run_ray_server(store: Path, config: ServeConfig, replicas: int, say: Callable[[str], None] = print,
                   num_cpus: float = 1.0) -> None:
    """`mupath serve --ray`: join the Ray cluster of $RAY_ADDRESS (or start a local one), deploy,
    and serve on config.host:config.port through Ray Serve's proxy until SIGINT/SIGTERM."""
    import ray
    from ray import serve
    application = mupath_application(store, config, replicas, num_cpus=num_cpus)
    ray.init(include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(application, name=APP_NAME, route_prefix="/")
        say(f"serving {store} with {replicas} Ray Serve replica(s) on http://{config.host}:{config.port}"
            f"{'' if config.token else ' (no token)'}; docs at /docs")
        while not stop.wait(0.5):
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
