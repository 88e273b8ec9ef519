"""Server settings: one frozen record, built by the CLI (or a test) and read by every part."""
from __future__ import annotations

import dataclasses

from mupath.errors import ConfigError

BATCHING_MODES = ("auto", "rows", "requests")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How the server listens, batches, reloads and what it refuses.

    `batching`: "rows" puts the images of every request of a batch into the same tensors (cross-request
    and cross-task batching); "requests" still runs a batch's requests together through the prefix trie
    but each request's images in tensors of their own, exactly the shapes `System.predict` uses; "auto"
    (default) probes each new version once and falls back to "requests" when batching rows together
    would change a single bit of any answer on this machine (see docs/serving.md).
    `prefix_sharing` off runs every task's model on its own (one model per task, batched per task):
    the baseline the serve benchmark compares with, not meant for use."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_wait_ms: float = 5.0         #: how long a batch waits for more requests after its first
    max_batch: int = 64              #: images per batch (a larger single request runs alone)
    max_body_mb: float = 16.0        #: request bodies over this are refused with 413
    max_pixels: int = 4_000_000      #: pixels per image (height x width) before decoding: 413 above
    poll_s: float = 1.0              #: how often the store is asked for a new commit
    batching: str = "auto"
    prefix_sharing: bool = True

    def __post_init__(self) -> None:
        checks = [(1 <= self.port <= 65535, f"port must be in 1..65535, got {self.port}"),
                  (self.max_wait_ms >= 0, f"--max-wait-ms must be >= 0, got {self.max_wait_ms}"),
                  (self.max_batch >= 1, f"--max-batch must be >= 1, got {self.max_batch}"),
                  (self.max_body_mb > 0, f"--max-body-mb must be > 0, got {self.max_body_mb}"),
                  (self.max_pixels >= 1, f"--max-pixels must be >= 1, got {self.max_pixels}"),
                  (self.poll_s > 0, f"--poll-s must be > 0, got {self.poll_s}"),
                  (self.batching in BATCHING_MODES,
                   f"--batching must be one of {', '.join(BATCHING_MODES)}, got '{self.batching}'"),
                  (self.token is None or self.token.strip() != "", "the token must not be empty")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
