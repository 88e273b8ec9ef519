"""The Open Inference Protocol routes of `mupath serve` (issue 33, docs/serving.md): a client written
elsewhere (`tritonclient[http]`, NVIDIA's) against a real uvicorn server sees the server and every task
ready, reads their metadata, and its JSON and binary `infer` answers equal `System.logits` /
`System.predict` bit for bit; v2 requests are batched with v1 requests of other tasks; the token
guards everything but the health routes; every bad request is a one-line 4xx and the server goes on."""
from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import free_port, npy, two_task_store, uvicorn_server
from fastapi.testclient import TestClient
from test_serve import files, one_line_error

from mupath import System
from mupath.serve import ServeConfig, create_app

OUTPUTS = ("logits", "probabilities", "class_id")
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small, parity_task) -> Path:
    """digits and parity evolved on the tiny root: two models, two retained paths."""
    return two_task_store(tmp_path_factory.mktemp("serve-v2") / "store", digits_small, parity_task)


@pytest.fixture(scope="module")
def system(store) -> System:
    return System.open(store, read_only=True)


@pytest.fixture(scope="module")
def triton(store):
    """tritonclient's HTTP client pointed at `mupath serve` (default settings but the port)."""
    import tritonclient.http as httpclient
    with uvicorn_server(store, ServeConfig(port=free_port())) as address:
        client = httpclient.InferenceServerClient(address)
        yield client
        client.close()


@pytest.fixture(scope="module")
def client(store):
    with TestClient(create_app(store, ServeConfig(max_body_mb=0.05, max_pixels=64 * 64))) as c:
        yield c


def triton_infer(triton, task: str, images: np.ndarray, binary: bool, outputs=OUTPUTS, **kwargs):
    import tritonclient.http as httpclient
    given = httpclient.InferInput("images", list(images.shape), "UINT8")
    given.set_data_from_numpy(images, binary_data=binary)
    asked = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs] if outputs else None
    return triton.infer(task, [given], outputs=asked, **kwargs)


def assert_equals_system(result, system: System, task: str, images: np.ndarray, outputs=OUTPUTS) -> None:
    """The asked outputs are System.logits, its softmax and System.predict, bit for bit and typed."""
    logits = system.logits(task, images)
    reference = {"logits": logits.numpy(), "probabilities": torch.softmax(logits, dim=1).numpy(),
                 "class_id": system.predict(task, images)}
    assert [o["name"] for o in result.get_response()["outputs"]] == list(outputs)
    for name in outputs:
        got = result.as_numpy(name)
        assert got.dtype == reference[name].dtype and got.shape == reference[name].shape, name
        assert np.array_equal(got, reference[name]), name


def v2_body(images: np.ndarray, binary: bool, outputs: tuple[str, ...] = OUTPUTS, **extra) -> tuple[bytes, dict]:
    """An inference request as raw bytes and headers (what a client sends), JSON or binary."""
    tensor: dict = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
    if binary:
        tensor["parameters"] = {"binary_data_size": images.size}
    else:
        tensor["data"] = images.ravel().tolist()
    doc = {"inputs": [tensor], "outputs": [{"name": n, "parameters": {"binary_data": binary}} for n in outputs],
           **extra}
    head = json.dumps(doc).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + images.tobytes(), {HEADER: str(len(head)), "content-type": "application/octet-stream"}


def test_tritonclient_sees_server_and_models_ready(triton, system):
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "mupath" and "binary_tensor_data" in server["extensions"]
    for task in ("digits", "parity"):
        version = system.store.retained_path(task).id
        record = system.task_record(task)
        assert triton.is_model_ready(task) and triton.is_model_ready(task, model_version=version)
        assert not triton.is_model_ready(task, model_version="no-such-path")
        meta = triton.get_model_metadata(task)
        assert meta == {"name": task, "versions": [version], "platform": "mupath",
                        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *record.image_shape]}],
                        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(record.class_names)]},
                                    {"name": "probabilities", "datatype": "FP32",
                                     "shape": [-1, len(record.class_names)]},
                                    {"name": "class_id", "datatype": "INT64", "shape": [-1]}]}
        assert triton.get_model_metadata(task, model_version=version) == meta
    assert not triton.is_model_ready("nope")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infer_equals_system(triton, system, digits_small, binary):
    x = digits_small.test.images[:7]                        # (7, 8, 8, 1) uint8
    for task in ("digits", "parity"):
        version = system.store.retained_path(task).id
        result = triton_infer(triton, task, x, binary, request_id=f"ask-{task}")
        assert_equals_system(result, system, task, x)
        answer = result.get_response()
        assert answer["id"] == f"ask-{task}" and answer["model_name"] == task and answer["model_version"] == version
        one = triton_infer(triton, task, x[3:4], binary, model_version=version)     # the version's route
        assert_equals_system(one, system, task, x[3:4])


def test_tritonclient_chosen_outputs(triton, system, digits_small):
    """Outputs come back as asked, in the request's order; none asked: all three (tritonclient then asks
    binary data); a version no longer served is refused."""
    from tritonclient.utils import InferenceServerException
    x = digits_small.test.images[10:13]
    assert_equals_system(triton_infer(triton, "parity", x, True, outputs=("class_id", "logits")),
                         system, "parity", x, ("class_id", "logits"))
    assert_equals_system(triton_infer(triton, "digits", x, False, outputs=None), system, "digits", x)
    with pytest.raises(InferenceServerException, match="is not served"):
        triton_infer(triton, "digits", x, True, model_version="an-old-path")
    with pytest.raises(InferenceServerException, match="digits, parity"):
        triton_infer(triton, "nope", x, True)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_raw_requests_both_ways(client, system, digits_small, binary):
    """Binary input with a JSON output beside a binary one (and the reverse), and the wire details a
    client relies on: the header length, little-endian data, the echoed id, the commit header."""
    x = digits_small.test.images[20:24]
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(x.shape)}
    tensor.update({"parameters": {"binary_data_size": x.size}} if binary else {"data": x.ravel().tolist()})
    doc = {"id": "42", "inputs": [tensor], "parameters": {"binary_data_output": binary},
           "outputs": [{"name": "class_id", "parameters": {"binary_data": not binary}}, {"name": "logits"}]}
    head = json.dumps(doc).encode()
    r = client.post("/v2/models/digits/infer", content=head + (x.tobytes() if binary else b""),
                    headers={HEADER: str(len(head))} if binary else {})
    assert r.status_code == 200, r.text
    assert r.headers["x-mupath-commit"]
    length = int(r.headers[HEADER])                 # one output is binary either way
    answer = json.loads(r.content[:length])
    assert answer["id"] == "42" and [o["name"] for o in answer["outputs"]] == ["class_id", "logits"]
    ids, logits = answer["outputs"]
    binary_part = r.content[length:]
    expected_logits, expected_ids = system.logits("digits", x).numpy(), system.predict("digits", x)
    if binary:                                      # class_id as JSON, logits (binary_data_output) binary
        assert ids["data"] == expected_ids.tolist() and logits["parameters"]["binary_data_size"] == len(binary_part)
        assert np.array_equal(np.frombuffer(binary_part, "<f4").reshape(logits["shape"]), expected_logits)
    else:                                           # class_id binary, logits as JSON
        assert ids["parameters"]["binary_data_size"] == 8 * len(x) == len(binary_part)
        assert np.array_equal(np.frombuffer(binary_part, "<i8"), expected_ids)
        assert np.array_equal(np.array(logits["data"], np.float32).reshape(logits["shape"]), expected_logits)


def test_json_only_answer_has_no_header_length(client, system, digits_small):
    x = digits_small.test.images[:2]
    body, headers = v2_body(x, False)
    r = client.post("/v2/models/parity/infer", content=body, headers=headers)
    assert r.status_code == 200 and HEADER.lower() not in r.headers
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["outputs"][2]["data"] == system.predict("parity", x).tolist()


def test_v2_requests_batch_with_v1_requests_of_other_tasks(store, system, digits_small, monkeypatch):
    """While a batch computes, a v2 request for parity and a v1 request for digits queue up: the next
    batch holds both, and each answer is still System's, bit for bit."""
    import mupath.serve.batching as batching
    release, entered = threading.Event(), threading.Event()
    batches: list[list[tuple[str, ...]]] = []
    real = batching.run_batch

    def held(version, jobs):
        batches.append([job.tasks for job in jobs])
        entered.set()
        release.wait(10)
        return real(version, jobs)
    monkeypatch.setattr(batching, "run_batch", held)
    x = digits_small.test.images[30:33]
    with TestClient(create_app(store, ServeConfig(max_wait_ms=20))) as c:
        queue = c.app.state.mupath.batcher._queue
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            first = pool.submit(c.post, "/v1/tasks/digits/predict", files=files(npy(x[:1])))
            assert entered.wait(10)
            body, headers = v2_body(x, True)
            v2 = pool.submit(c.post, "/v2/models/parity/infer", content=body, headers=headers)
            v1 = pool.submit(c.post, "/v1/tasks/digits/predict", files=files(npy(x)))
            deadline = time.monotonic() + 10
            while len(queue) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            responses = [f.result(30) for f in (first, v2, v1)]
    assert all(r.status_code == 200 for r in responses), [r.text[:200] for r in responses]
    assert sorted(batches[1]) == [("digits",), ("parity",)]
    answer = responses[1]
    length = int(answer.headers[HEADER])
    logits = np.frombuffer(answer.content[length:length + 4 * 2 * len(x)], "<f4").reshape(len(x), 2)
    assert np.array_equal(logits, system.logits("parity", x).numpy())
    assert [p["class_id"] for p in responses[2].json()["predictions"]] == system.predict("digits", x).tolist()


def test_token_guards_all_but_health(store):
    with TestClient(create_app(store, ServeConfig(token="s3cret"))) as c:
        for path in ("/v2", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200, path
        auth = {"Authorization": "Bearer s3cret"}
        for path in ("/v2/models/digits", "/v2/models/digits/ready"):
            one_line_error(c.get(path), 401)
            assert c.get(path, headers=auth).status_code == 200
        body, headers = v2_body(np.zeros((1, 8, 8, 1), np.uint8), False)
        one_line_error(c.post("/v2/models/digits/infer", content=body, headers=headers), 401)
        assert c.post("/v2/models/digits/infer", content=body, headers={**headers, **auth}).status_code == 200


def test_not_ready_until_the_inference_thread_runs(store):
    """Before the app's lifespan starts its batcher the server is live, not ready (503, one line)."""
    c = TestClient(create_app(store))                 # no `with`: no lifespan, no inference thread
    assert c.get("/v2/health/live").status_code == 200
    one_line_error(c.get("/v2/health/ready"), 503)
    one_line_error(c.get("/v2/models/digits/ready"), 503)


def tensor_request(**tensor) -> dict:
    """A request for one 8 x 8 image, with `tensor`'s fields changed (None: left out)."""
    fields = {"name": "images", "datatype": "UINT8", "shape": [1, 8, 8, 1], "data": [0] * 64, **tensor}
    return {"inputs": [{k: v for k, v in fields.items() if v is not None}]}


BAD_JSON = {   # name -> (request, status)
    "unknown input": (tensor_request(name="pixels"), 400),
    "two inputs": ({"inputs": tensor_request()["inputs"] * 2}, 400),
    "no inputs": ({"outputs": [{"name": "logits"}]}, 400),
    "wrong datatype": (tensor_request(datatype="FP32"), 400),
    "rank 3": (tensor_request(shape=[1, 8, 8]), 400),
    "negative size": (tensor_request(shape=[1, -8, 8, 1]), 400),
    "two channels": (tensor_request(shape=[1, 8, 4, 2]), 400),
    "zero images": (tensor_request(shape=[0, 8, 8, 1], data=[]), 400),
    "data too short": (tensor_request(data=[0] * 63), 400),
    "shape too big for the data": (tensor_request(shape=[10 ** 12, 8, 8, 1]), 400),
    "value over 255": (tensor_request(data=[256] * 64), 400),
    "float values": (tensor_request(data=[0.5] * 64), 400),
    "strings": (tensor_request(data=["a"] * 64), 400),
    "ragged data": (tensor_request(data=[[0] * 32, [0] * 31]), 400),
    "no data": (tensor_request(data=None), 400),
    "over the pixel limit": (tensor_request(shape=[1, 65, 65, 1], data=[0] * 65 * 65), 413),
    "unknown output": ({**tensor_request(), "outputs": [{"name": "embeddings"}]}, 400),
    "output twice": ({**tensor_request(), "outputs": [{"name": "logits"}, {"name": "logits"}]}, 400),
    "classification extension": ({**tensor_request(), "outputs": [{"name": "logits",
                                                                   "parameters": {"classification": 2}}]}, 400),
    "outputs not a list": ({**tensor_request(), "outputs": "logits"}, 400),
    "output not an object": ({**tensor_request(), "outputs": ["logits"]}, 400),
    "shared memory extension": (tensor_request(parameters={"shared_memory_region": "r0"}, data=None), 400),
    "binary_data not a flag": ({**tensor_request(), "parameters": {"binary_data_output": "yes"}}, 400),
    "id not a string": ({**tensor_request(), "id": 7}, 400),
    "binary size without bytes": (tensor_request(parameters={"binary_data_size": 64}, data=None), 400),
    "a JSON array": ([1, 2, 3], 400),
}


@pytest.mark.parametrize("name", list(BAD_JSON))
def test_bad_json_requests(client, name):
    request, status = BAD_JSON[name]
    r = client.post("/v2/models/digits/infer", content=json.dumps(request).encode())
    one_line_error(r, status)


def test_bad_requests(client, digits_small):
    """Unknown models and versions, lying binary headers, bodies over the limit, compression: each a
    one-line 4xx; the server answers the next good request."""
    x = digits_small.test.images[:2]
    body, headers = v2_body(x, True)
    length = int(headers[HEADER])

    def infer(content: bytes, head: dict, path: str = "/v2/models/digits/infer") -> httpx.Response:
        return client.post(path, content=content, headers=head)
    assert "digits, parity" in one_line_error(infer(body, headers, "/v2/models/nope/infer"), 404)
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/digits/versions/old",
                 "/v2/models/digits/versions/old/ready"):
        one_line_error(client.get(path), 404)
    assert "is not served" in one_line_error(infer(body, headers, "/v2/models/digits/versions/old/infer"), 404)
    one_line_error(infer(b"not json", {}), 400)
    one_line_error(infer(b"\xff\xfe{", {}), 400)                                  # not even UTF-8
    one_line_error(infer(b"[" * 40_000, {}), 400)                                  # nested past the parser's depth
    one_line_error(infer(body, {HEADER: "many"}), 400)                         # not a byte count
    one_line_error(infer(body, {HEADER: str(len(body) + 1)}), 400)             # header longer than the body
    one_line_error(infer(body[:-1], headers), 400)                             # fewer bytes than announced
    one_line_error(infer(body + b"\0", headers), 400)                          # more bytes than announced
    one_line_error(infer(body, {HEADER: str(length - 1)}), 400)                # JSON cut short
    lying = json.loads(body[:length])
    lying["inputs"][0]["parameters"]["binary_data_size"] = x.size - 1
    head = json.dumps(lying).encode()
    one_line_error(infer(head + x.tobytes()[:-1], {HEADER: str(len(head))}), 400)   # size against the shape
    json_body, _ = v2_body(x, False)
    one_line_error(infer(json_body + b"\0" * 8, {HEADER: str(len(json_body))}), 400)   # bytes nobody announced
    big = np.zeros((20, 32, 32, 1), np.uint8)                                  # 20 KB of pixels: 80 KB of JSON
    one_line_error(infer(*v2_body(big, False)), 413)
    chunks = (b"x" * 10_000 for _ in range(20))                                 # no Content-Length
    one_line_error(client.post("/v2/models/digits/infer", content=chunks), 413)
    one_line_error(infer(body, {**headers, "content-encoding": "gzip"}), 415)
    assert "no route" in one_line_error(client.get("/v2/nothing"), 404)
    assert infer(body, headers).status_code == 200                             # still serving
