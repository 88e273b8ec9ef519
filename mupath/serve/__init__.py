"""`mupath serve`: every task of a store over HTTP while the store keeps growing (docs/serving.md).

`create_app(store_folder, ServeConfig(...))` builds the FastAPI app; `mupath.cli.main serve` runs it on
uvicorn. The store is opened read-only: the server never writes a byte to it."""
from __future__ import annotations

from mupath.serve.app import create_app
from mupath.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
