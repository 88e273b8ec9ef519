"""The one error type a request can end in: an HTTP status and a one-line message, sent as
`{"error": "..."}` (the serving contract)."""
from __future__ import annotations


class ServeError(Exception):
    """A request the server refuses; `status` is the 4xx code the contract gives it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())      # one line, whatever the cause said
