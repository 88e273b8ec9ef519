"""Prometheus metrics of one app, in a registry of its own (several apps in one process, as in the
tests, never clash). Route labels are route templates, so task names typed into URLs cannot grow
the label set without bound; per-task counts use served task names only."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mupath_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("mupath_http_request_seconds", "Time from request to answer",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_images = Histogram("mupath_batch_images", "Images per inference batch",
                                      buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("mupath_batch_requests", "Requests per inference batch",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("mupath_batch_seconds", "Compute time of one inference batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.task_images = Counter("mupath_task_images", "Images answered per task", ["task"], registry=r)
        self.task_requests = Counter("mupath_task_requests", "Requests answered per task", ["task"], registry=r)
        self.commit = Gauge("mupath_served_commit", "Commit id of the served version", registry=r)
        self.reloads = Counter("mupath_reloads", "New versions swapped in", registry=r)
        self.reload_seconds = Histogram("mupath_reload_seconds", "Time to build a new version",
                                        buckets=LATENCY_BUCKETS, registry=r)

    def observe_batch(self, requests: int, images: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)

    def observe_swap(self, commit_id: int, seconds: float) -> None:
        self.commit.set(commit_id)
        self.reloads.inc()
        self.reload_seconds.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
