"""The server on Ray Serve (issue 23, docs/page.md "Ray Serve"): the same app deployed with 2 replicas
on a local 2-CPU Ray cluster answers through Ray Serve's HTTP proxy on 127.0.0.1 exactly as
System.predict does, both replicas answer, and the contract's errors and token hold there too."""
from __future__ import annotations

import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (the dev extra has it): Ray Serve is not tested")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")

from conftest import free_port, npy, two_task_store  # noqa: E402

from mupath import System  # noqa: E402
from mupath.serve import ServeConfig  # noqa: E402
from mupath.serve.ray_serve import APP_NAME, mupath_application  # noqa: E402

TOKEN = "ray-token"


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small, parity_task) -> Path:
    return two_task_store(tmp_path_factory.mktemp("rayserve") / "store", digits_small, parity_task,
                          generations=1)                                  # the serving is tested


@pytest.fixture(scope="module")
def base_url(store):
    """Two replicas on a local Ray cluster, behind Ray Serve's proxy on a free loopback port."""
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(token=TOKEN, max_wait_ms=2)
        serve.run(mupath_application(store, config, replicas=2, num_cpus=0.5), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_like_system_predict(base_url, store, digits_small):
    status = serve.status().applications[APP_NAME].deployments[APP_NAME]
    assert status.replica_states.get("RUNNING") == 2, status
    system = System.open(store, read_only=True)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    x = digits_small.test.images[:6]
    replicas = set()
    with httpx.Client(base_url=base_url, headers=auth, timeout=60) as client:
        for _ in range(12):         # sequential requests: power of two choices ties, so both replicas serve
            r = client.post("/v1/predict", files=[("files", ("x.npy", npy(x), "application/octet-stream"))])
            assert r.status_code == 200, r.text
            replicas.add(r.headers["x-mupath-replica"])
            for task in ("digits", "parity"):
                names = system.task_record(task).class_names
                got = r.json()["results"][task]
                assert got["version"] == system.store.retained_path(task).id
                assert [p["class_id"] for p in got["predictions"]] == system.predict(task, x).tolist()
                probs = np.array([[p["probabilities"][n] for n in names] for p in got["predictions"]], np.float32)
                assert np.array_equal(probs, torch.softmax(system.logits(task, x), dim=1).numpy())
        assert len(replicas) == 2, replicas
        assert client.get("/v1/tasks").json()["tasks"][0]["name"] == "digits"
        assert client.get("/").status_code == 200                         # the page, through the proxy
        missing = client.post("/v1/tasks/nope/predict", files=[("files", ("x.npy", npy(x), "x"))])
        assert missing.status_code == 404 and "unknown" in missing.json()["error"]
    unauthorised = httpx.get(base_url + "/v1/tasks", timeout=60)
    assert unauthorised.status_code == 401 and "token" in unauthorised.json()["error"]
    assert httpx.get(base_url + "/healthz", timeout=60).json() == {"status": "ok"}
