"""The HTTP server (issue 22, docs/serving.md): the contract's routes and errors, answers bit-identical
to System.predict / System.logits, cross-task batching, hot add under a concurrent writer, bad input,
auth, and a SIGKILLed server leaving the store healthy and unchanged."""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import free_port, npy, two_task_store
from fastapi.testclient import TestClient
from PIL import Image

from mupath import System
from mupath.model.multipath import shared_forward
from mupath.serve import ServeConfig, create_app
from mupath.serve.batching import Job, run_batch
from mupath.serve.forward import routed_forward
from mupath.train.pipeline import to_model_input

REPO = Path(__file__).resolve().parent.parent
MUPATH = [sys.executable, "-m", "mupath.cli.main"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small, parity_task) -> Path:
    """digits and parity evolved on the tiny root (parity may reuse digits' components)."""
    return two_task_store(tmp_path_factory.mktemp("serve") / "store", digits_small, parity_task)


@pytest.fixture(scope="module")
def system(store) -> System:
    return System.open(store, read_only=True)


@pytest.fixture
def client(store):
    with TestClient(create_app(store, ServeConfig(max_wait_ms=20))) as c:
        yield c


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def files(*parts: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"part{i}", p, "application/octet-stream")) for i, p in enumerate(parts)]


def expected(system: System, task: str, images: np.ndarray) -> tuple[list[int], np.ndarray]:
    """What the server must answer: System.predict's ids, softmax of System.logits."""
    logits = system.logits(task, images)
    return system.predict(task, images).tolist(), torch.softmax(logits, dim=1).numpy()


def assert_answer(obj: dict, system: System, task: str, images: list[np.ndarray]) -> None:
    """`obj` (one task's answer) equals the reference, part by part, bit for bit."""
    names = system.task_record(task).class_names
    assert obj["task"] == task and obj["version"] == system.store.retained_path(task).id
    preds = obj["predictions"]
    assert len(preds) == sum(len(p) for p in images)
    at = 0
    for part in images:
        ids, probs = expected(system, task, part)
        got = preds[at:at + len(part)]
        assert [p["class_id"] for p in got] == ids
        assert [p["class_name"] for p in got] == [names[i] for i in ids]
        got_probs = np.array([[p["probabilities"][n] for n in names] for p in got], dtype=np.float32)
        assert np.array_equal(got_probs, probs)
        at += len(part)


def test_tasks_and_healthz(client, system):
    assert client.get("/healthz").json() == {"status": "ok"}
    body = client.get("/v1/tasks").json()
    by_name = {t["name"]: t for t in body["tasks"]}
    assert list(by_name) == ["digits", "parity"]
    status = {s.task: s for s in system.status()}
    for name, entry in by_name.items():
        assert entry["classes"] == list(system.task_record(name).class_names)
        assert entry["version"] == status[name].path_id
        assert entry["test_accuracy"] == status[name].test_accuracy
        assert entry["params_owned"] == status[name].params_owned
        assert entry["reused_from"] == status[name].reused_from
        assert entry["grown_from"] == status[name].grown_from
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]


def test_docs_pages_need_no_network(client):
    """/docs and /redoc name only this server's files (offline users get a page), and those files are served."""
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href|url)\s*[:=]\s*["\']([^"\']+)["\']', html.text)
        assert assets and not [a for a in assets if "://" in a or a.startswith("//")], assets
        for asset in assets:
            if asset.endswith((".js", ".css")):
                assert client.get(asset).status_code == 200, asset


def test_predict_equals_system_predict(client, system, digits_small):
    x = digits_small.test.images[:7]                     # (7, 8, 8, 1) uint8
    single = digits_small.test.images[9, :, :, 0]        # one greyscale picture
    r = client.post("/v1/tasks/digits/predict", files=files(npy(x), png(single)))
    assert r.status_code == 200, r.text
    assert_answer(r.json(), system, "digits", [x, single[None]])
    r = client.post("/v1/tasks/parity/predict", files=files(npy(x[..., 0])))     # (N, H, W) arrays too
    assert_answer(r.json(), system, "parity", [x[..., 0]])


def test_predict_many(client, system, digits_small):
    x = digits_small.test.images[:5]
    body = client.post("/v1/predict", files=files(npy(x))).json()
    assert list(body["results"]) == ["digits", "parity"]
    for task in ("digits", "parity"):
        assert_answer(body["results"][task], system, task, [x])
    body = client.post("/v1/predict?tasks=parity", files=files(npy(x))).json()
    assert list(body["results"]) == ["parity"]


def test_routed_forward_is_the_trie(system, digits_small):
    """Every task on every row: the same bits as shared_forward; on a subset of rows: those rows."""
    models = {t: system.model(t) for t in ("digits", "parity")}
    ids = {t: system.store.retained_path(t).components for t in models}
    x = to_model_input(torch.from_numpy(digits_small.test.images[:6].transpose(0, 3, 1, 2).copy()), 8)
    with torch.inference_mode():
        ref = shared_forward(models, ids, x)
        got = routed_forward(models, ids, x, {t: range(6) for t in models})
        assert all(torch.equal(ref[t], got[t]) for t in models)
        picked = routed_forward(models, ids, x, {"digits": [0, 2, 3], "parity": [1, 2, 5]})
        assert torch.allclose(picked["digits"], ref["digits"][[0, 2, 3]], atol=1e-5)
        assert torch.allclose(picked["parity"], ref["parity"][[1, 2, 5]], atol=1e-5)


@pytest.mark.parametrize("rows", [False, True])
def test_mixed_batch_equals_per_request(client, system, digits_small, rows):
    """One batch of requests for different tasks and sizes: each answer as System.predict gives it
    (bit for bit when requests keep their own tensors; same classes when rows share tensors)."""
    import dataclasses
    version = dataclasses.replace(client.app.state.mupath.registry.current, rows_batching=rows)
    imgs = digits_small.test.images
    asks = [(("digits",), [imgs[:1]]), (("parity",), [imgs[1:4], imgs[4:5]]), (("digits", "parity"), [imgs[5:9]]),
            (("parity",), [imgs[9:10]])]
    jobs = [Job(tasks, tuple(parts), concurrent.futures.Future()) for tasks, parts in asks]
    answers = run_batch(version, jobs)
    for (_, parts), answer in zip(asks, answers):
        for a in answer.answers:
            ids = np.concatenate([system.predict(a.task, p) for p in parts])
            assert a.class_ids.tolist() == ids.tolist()
            probs = np.concatenate([expected(system, a.task, p)[1] for p in parts])
            same = np.array_equal if not rows else lambda a, b: np.allclose(a, b, atol=1e-6)
            assert same(a.probabilities, probs)


def test_concurrent_requests_are_batched_and_exact(store, system, digits_small):
    imgs = digits_small.test.images
    with TestClient(create_app(store, ServeConfig(max_wait_ms=100, max_batch=64))) as c:
        def ask(i: int) -> tuple[int, dict]:
            task = ("digits", "parity")[i % 2]
            return i, c.post(f"/v1/tasks/{task}/predict", files=files(npy(imgs[i:i + 1 + i % 3]))).json()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(16)))
        for i, body in results:
            assert_answer(body, system, ("digits", "parity")[i % 2], [imgs[i:i + 1 + i % 3]])
        text = c.get("/metrics").text
    value = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines() if not line.startswith("#")}
    count, total = value["mupath_batch_requests_count"], value["mupath_batch_requests_sum"]
    assert total == 16 and count < 16          # some batches held more than one request
    assert 'mupath_task_images_total{task="digits"}' in text
    assert 'mupath_http_request_seconds_bucket' in text


def test_healthz_answers_while_a_batch_computes(client, digits_small, monkeypatch):
    import mupath.serve.batching as batching
    release, entered = threading.Event(), threading.Event()
    real = batching.run_batch

    def slow(version, jobs):
        entered.set()
        release.wait(10)
        return real(version, jobs)
    monkeypatch.setattr(batching, "run_batch", slow)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/v1/tasks/digits/predict",
                              files=files(npy(digits_small.test.images[:2])))
        assert entered.wait(10)
        assert client.get("/healthz").json() == {"status": "ok"}
        assert not pending.done()
        release.set()
        assert pending.result(10).status_code == 200


def one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text[:300]
    message = r.json()["error"]
    assert set(r.json()) == {"error"} and "\n" not in message and message
    return message


def test_bad_inputs(store, digits_small):
    x = digits_small.test.images[:2]
    with TestClient(create_app(store, ServeConfig(max_body_mb=0.05, max_pixels=64 * 64))) as c:
        def post(body: list[bytes], task: str = "digits") -> httpx.Response:
            return c.post(f"/v1/tasks/{task}/predict", files=files(*body))
        assert "digits, parity" in one_line_error(post([npy(x)], "nope"), 404)
        assert "digits, parity" in one_line_error(c.post("/v1/predict?tasks=digits,nope", files=files(npy(x))), 404)
        one_line_error(post([b"not an image at all"]), 415)
        one_line_error(post([npy(np.zeros((2, 8, 8, 2), np.uint8))]), 422)          # 2 channels
        one_line_error(post([npy(np.zeros((0, 8, 8), np.uint8))]), 422)             # zero images
        one_line_error(c.post("/v1/tasks/digits/predict", files=[("other", ("a", npy(x), "x"))]), 422)   # no 'files'
        one_line_error(c.post("/v1/tasks/digits/predict", data={"other": "field"}), 415)   # not multipart
        one_line_error(c.post("/v1/tasks/digits/predict", json={"images": [1, 2]}), 415)
        noise = png(np.random.default_rng(0).integers(0, 256, (60, 60), dtype=np.uint8))
        one_line_error(post([noise[:len(noise) // 2]]), 422)                        # truncated PNG
        one_line_error(post([npy(np.array([{"a": 1}], dtype=object))]), 422)        # never unpickled
        one_line_error(post([npy(x)[:-10]]), 422)                                   # header lies about size
        buf = io.BytesIO()
        np.savez(buf, images=x)
        one_line_error(post([buf.getvalue()]), 415)
        one_line_error(post([npy(np.zeros((1, 65, 65), np.uint8))]), 413)           # over the pixel limit
        bomb = io.BytesIO()
        Image.new("L", (3000, 3000)).save(bomb, format="PNG")                       # 9 Mpx in a few KB
        assert len(bomb.getvalue()) < 40_000
        one_line_error(post([bomb.getvalue()]), 413)
        one_line_error(post([npy(np.zeros((300, 16, 16), np.uint8))]), 413)         # body over 0.05 MB
        chunks = (b"x" * 10_000 for _ in range(20))                                 # no Content-Length
        one_line_error(c.post("/v1/tasks/digits/predict", content=chunks,
                              headers={"content-type": "multipart/form-data; boundary=zz"}), 413)
        assert "no route" in one_line_error(c.get("/v1/nothing"), 404)
        assert c.post("/v1/tasks/digits/predict", files=files(npy(x))).status_code == 200   # still serving


def test_auth(store, digits_small, monkeypatch):
    with TestClient(create_app(store, ServeConfig(token="s3cret"))) as c:
        assert c.get("/healthz").status_code == 200
        for path in ("/v1/tasks", "/metrics", "/docs", "/openapi.json"):
            one_line_error(c.get(path), 401)
            one_line_error(c.get(path, headers={"Authorization": "Bearer wrong"}), 401)
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        one_line_error(c.post("/v1/tasks/digits/predict", files=files(npy(digits_small.test.images[:1]))), 401)
        one_line_error(c.get("/v1/tasks", headers={"Authorization": "Basic s3cret"}), 401)
    from mupath.serve.cli import config_from_options
    monkeypatch.setenv("MUPATH_TOKEN", "from-env")
    assert config_from_options("127.0.0.1", 8000, None, max_wait_ms=5, max_batch=64, max_body_mb=16,
                               max_pixels=10**6, poll_s=1, batching="auto").token == "from-env"


def answer_key(system: System, task: str, images: np.ndarray) -> tuple[str, list[int], list[float]]:
    """(version, class ids, probabilities) the reference gives now: what an answer naming that version must be."""
    ids, probs = expected(system, task, images)
    return system.store.retained_path(task).id, ids, probs.ravel().tolist()


def served_key(obj: dict, names: tuple[str, ...]) -> tuple[str, list[int], list[float]]:
    preds = obj["predictions"]
    return obj["version"], [p["class_id"] for p in preds], \
        np.array([[p["probabilities"][n] for n in names] for p in preds], dtype=np.float32).ravel().tolist()


WRITER = """
import sys; sys.path.insert(0, 'tests')
from conftest import TINY_SETTINGS
from mupath import System, Task
from mupath.data import load_task
d = load_task('digits', max_train=400)
t = Task.from_arrays('mod3', d.train.images, d.train.labels % 3, val=(d.validation.images, d.validation.labels % 3),
                     test=(d.test.images, d.test.labels % 3), class_names=['0', '1', '2'])
s = System.open(sys.argv[1])
s.add_task(t)
s.evolve(['mod3'], workers=1, **TINY_SETTINGS)
s.evolve(['digits'], workers=1, seed=1, **TINY_SETTINGS)
"""


@pytest.mark.slow
def test_hot_add_while_another_process_commits(store, tmp_path, digits_small):
    """A subprocess adds and evolves a new task, then re-evolves digits, while requests keep flowing:
    none fails, the new task and the new digits path are served without a restart, every answer equals
    the offline answer of the version it names, and no answer mixes two commits."""
    folder = tmp_path / "store"
    shutil.copytree(store, folder)
    x = digits_small.test.images[:3]
    offline = System.open(folder, read_only=True)
    refs = {task: [answer_key(offline, task, x)] for task in ("digits", "parity")}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=REPO)
    seen: list[dict] = []
    with TestClient(create_app(folder, ServeConfig(poll_s=0.1, max_wait_ms=2))) as c:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (writer.poll() is None or "mod3" not in seen[-1]):
            r = c.post("/v1/predict", files=files(npy(x)))
            assert r.status_code == 200, r.text[:300]
            seen.append(r.json()["results"])
            time.sleep(0.05)
        assert writer.wait(60) == 0
        final_version = c.get("/v1/tasks").json()
    for task in ("digits", "parity", "mod3"):
        refs.setdefault(task, []).append(answer_key(offline, task, x))     # the store's paths now
    assert "mod3" in seen[-1] and any("mod3" not in s for s in seen)
    assert [t["version"] for t in final_version["tasks"]] == [refs[t][-1][0] for t in ("digits", "parity", "mod3")]
    new_digits = refs["digits"][-1][0] != refs["digits"][0][0]
    for results in seen:
        for task, obj in results.items():
            assert served_key(obj, offline.task_record(task).class_names) in refs[task]
        if new_digits and results["digits"]["version"] == refs["digits"][-1][0]:
            assert "mod3" in results            # digits' re-commit came after mod3's: one commit whole


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_sigkill_mid_requests_leaves_the_store_healthy(store, tmp_path, digits_small):
    folder = tmp_path / "store"
    shutil.copytree(store, folder)
    before = tree_digest(folder)
    port = free_port()
    server = subprocess.Popen([*MUPATH, "serve", str(folder), "--port", str(port), "--token", "t"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start: " + server.stdout.read().decode()[-2000:])
        assert httpx.get(f"{base}/v1/tasks", headers=auth).status_code == 200

        def hammer() -> int:
            done = 0
            with httpx.Client(timeout=5) as h:
                while True:
                    try:
                        h.post(f"{base}/v1/predict", headers=auth, files=files(npy(digits_small.test.images[:50])))
                        done += 1
                    except httpx.HTTPError:
                        return done
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            counts = [pool.submit(hammer) for _ in range(4)]
            time.sleep(1.5)
            os.kill(server.pid, signal.SIGKILL)
            assert sum(f.result(30) for f in counts) > 0
    finally:
        server.kill()
        server.wait(10)
    assert tree_digest(folder) == before                     # the server never wrote a byte
    verify = subprocess.run([*MUPATH, "verify", str(folder)], cwd=REPO, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "healthy" in verify.stdout
