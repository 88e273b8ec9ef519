"""`mupath serve`: build the app (a bad store or setting fails here, before anything listens) and
run it on uvicorn. SIGTERM / Ctrl-C stop it; the store was never written to, so nothing needs
cleaning up."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mupath.serve.config import ServeConfig

TOKEN_ENV = "MUPATH_TOKEN"


def config_from_options(host: str, port: int, token: str | None, *, max_wait_ms: float, max_batch: int,
                        max_body_mb: float, max_pixels: int, poll_s: float, batching: str) -> ServeConfig:
    """A ServeConfig from the command line; the token falls back to $MUPATH_TOKEN (the command line
    is visible to every user of the machine, the environment is not)."""
    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    return ServeConfig(host=host, port=port, token=token, max_wait_ms=max_wait_ms, max_batch=max_batch,
                       max_body_mb=max_body_mb, max_pixels=max_pixels, poll_s=poll_s, batching=batching)


def run_server(store: Path, config: ServeConfig, say: Callable[[str], None] = print) -> None:
    import uvicorn

    from mupath.serve.app import create_app
    app = create_app(store, config)
    version = app.state.mupath.registry.current
    say(f"serving {len(version.tasks)} task(s) of {store} (commit {version.commit_id}) on "
        f"http://{config.host}:{config.port}{'' if config.token else ' (no token)'}; docs at /docs")
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
