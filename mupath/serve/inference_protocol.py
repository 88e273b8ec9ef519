"""The Open Inference Protocol (KServe v2, the HTTP/REST API of Triton and MLServer) on `mupath serve`,
so that standard clients (`tritonclient.http`, KServe's) and model-serving platforms call it as they
call those servers (docs/serving.md, "Open Inference Protocol").

One model per served task, named as the task; its one version is the id of the task's retained path
(the `version` of the v1 answers), so `/versions/{version}` names exactly the weights that answer. The
model takes `images` (UINT8, [N, H, W, C]: what `System.predict` takes) and gives `logits` (FP32,
[N, classes]), `probabilities` (FP32, their softmax) and `class_id` (INT64, [N]). An inference request
goes through the very path the v1 predict routes take (`answering.answer_request`: the same batcher,
batches shared with v1 requests and across tasks, the same bits), only its wire format differs: JSON
tensors, or binary tensor data after the JSON header (the protocol's binary extension), both ways.

Every refusal is the protocol's `{"error": "one line"}` with a 4xx status, like the v1 routes' (the app's
handlers): bad requests 400, an unknown model or version 404, bodies over the limit 413 (the app's
BodyLimit), a compressed body 415; a server or model that cannot answer yet 503."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mupath import __version__
from mupath.serve.answering import ServerState, answer_request, commit_headers, resolve
from mupath.serve.batching import TaskAnswer
from mupath.serve.errors import ServeError
from mupath.serve.images import check_pixels, checked_images
from mupath.serve.registry import ServedTask

router = APIRouter(tags=["Open Inference Protocol (v2)"])
HEADER_LENGTH = "inference-header-content-length"   #: bytes of JSON before the binary tensor data
SERVER_NAME = "mupath"
PLATFORM = "mupath"                                   #: what a model's metadata names as its platform
EXTENSIONS = ("binary_tensor_data",)
INPUT = "images"
INPUT_SOURCE = f"input '{INPUT}'"
INPUT_HELP = f"one input named '{INPUT}' (UINT8, shape [N, H, W, C])"
#: output name -> protocol datatype, in the order an answer lists them when the request names none
OUTPUTS = {"logits": "FP32", "probabilities": "FP32", "class_id": "INT64"}
#: protocol datatype -> the numpy type of its bytes (the protocol's binary data is little-endian)
NUMPY_TYPES: dict[str, np.dtype] = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
MAX_LENGTH_DIGITS = 18


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """A tensor as model metadata describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool                   #: sent as binary tensor data after the JSON header (else JSON `data`)


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: its images as `System.predict` takes them (validated and converted
    by the same function) and the outputs it asks, in its order."""

    id: str | None                 #: echoed in the answer
    images: np.ndarray             #: uint8 (N, H, W, C)
    outputs: tuple[RequestedOutput, ...]


@dataclasses.dataclass(frozen=True)
class InferResponse:
    """The answer's bytes; `header_length` is set when binary tensor data follows the JSON header."""

    body: bytes
    header_length: int | None


# ---- metadata --------------------------------------------------------------------------------------
def model_metadata(task: ServedTask) -> dict[str, object]:
    """The protocol's model metadata of one served task."""
    height, width, channels = task.info.image_shape
    classes = len(task.class_names)
    inputs = [TensorMeta(INPUT, "UINT8", (-1, height, width, channels))]
    outputs = [TensorMeta("logits", OUTPUTS["logits"], (-1, classes)),
               TensorMeta("probabilities", OUTPUTS["probabilities"], (-1, classes)),
               TensorMeta("class_id", OUTPUTS["class_id"], (-1,))]
    return {"name": task.name, "versions": [task.version], "platform": PLATFORM,
            "inputs": [t.as_json() for t in inputs], "outputs": [t.as_json() for t in outputs]}


# ---- parsing an inference request ---------------------------------------------------------------------
def parse_infer_request(body: bytes, header_length: str | None, label: str, max_pixels: int) -> InferRequest:
    """The request in `body` (JSON, or a JSON header of `header_length` bytes and binary tensor data
    after it), or a ServeError naming what is wrong with it and how to send it. `label` names the task
    in image errors."""
    head, binary = split_body(body, header_length)
    doc = _json_object(head)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ServeError(400, f"the request's 'id' must be a string, got {_short(request_id)}")
    binary_output = _flag(_parameters(doc.get("parameters"), "the request"), "binary_data_output", False,
                          "the request")
    images = _images(doc.get("inputs"), binary, label, max_pixels)
    return InferRequest(request_id, images, _outputs(doc.get("outputs"), binary_output))


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data): the whole body is JSON without the header."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not re.fullmatch(f"[0-9]{{1,{MAX_LENGTH_DIGITS}}}", text):
        raise ServeError(400, f"the Inference-Header-Content-Length header must be a byte count, got {text[:40]!r}")
    length = int(text)
    if length > len(body):
        raise ServeError(400, f"Inference-Header-Content-Length says the JSON header has {length:,} bytes but "
                         f"the body has only {len(body):,}")
    return body[:length], body[length:]


def _json_object(head: bytes) -> Mapping[str, object]:
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError):        # UnicodeDecodeError is a ValueError
        raise ServeError(400, "the inference request is not valid JSON: send a JSON object with 'inputs' "
                         "(binary tensor data goes after it, its length in Inference-Header-Content-Length)") from None
    if not isinstance(doc, dict):
        raise ServeError(400, f"the inference request must be a JSON object with 'inputs', got {type(doc).__name__}")
    return doc


def _parameters(value: object, where: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServeError(400, f"'parameters' of {where} must be a JSON object, got {_short(value)}")
    for name in ("shared_memory_region", "classification"):
        if name in value:
            raise ServeError(400, f"{where} uses the '{name}' extension, which this server does not support; "
                             "send tensor data in the request and ask outputs by name")
    return value


def _flag(parameters: Mapping[str, object], name: str, default: bool, where: str) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise ServeError(400, f"parameter '{name}' of {where} must be true or false, got {_short(value)}")
    return value


def _images(inputs: object, binary: bytes, label: str, max_pixels: int) -> np.ndarray:
    """The one input's images, validated as `System.predict` validates them."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ServeError(400, f"'inputs' must be a list of {INPUT_HELP}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise ServeError(400, f"unknown input {_short(tensor.get('name'))}; this model takes {INPUT_HELP}")
    if tensor.get("datatype") != "UINT8":
        raise ServeError(400, f"{INPUT_SOURCE} has datatype {_short(tensor.get('datatype'))}; send UINT8 "
                         "(pixel values 0..255)")
    shape = _shape(tensor.get("shape"))
    check_pixels(shape[1], shape[2], max_pixels, INPUT_SOURCE)
    size = _parameters(tensor.get("parameters"), INPUT_SOURCE).get("binary_data_size")
    if size is None:
        if binary:
            raise ServeError(400, f"{len(binary):,} bytes follow the JSON header but no input announces them "
                             "(parameters.binary_data_size)")
        images = _json_data(tensor.get("data"), shape)
    else:
        images = _binary_data(size, binary, shape, tensor.get("data") is not None)
    return checked_images(images, INPUT_SOURCE, label, status=400)


def _shape(value: object) -> tuple[int, int, int, int]:
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ServeError(400, f"{INPUT_SOURCE} must have shape [N, H, W, C] (four sizes >= 0), got {_short(value)}")
    return value[0], value[1], value[2], value[3]


def _json_data(data: object, shape: tuple[int, ...]) -> np.ndarray:
    """JSON tensor data, flat or nested (row-major), as UINT8 of `shape`."""
    if data is None:
        raise ServeError(400, f"{INPUT_SOURCE} has no 'data' (nor parameters.binary_data_size for binary data)")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ServeError(400, f"{INPUT_SOURCE}: 'data' must be a list (flat or nested) of integers 0..255") from None
    if values.size != math.prod(shape):
        raise ServeError(400, f"{INPUT_SOURCE} has {values.size:,} values in 'data' but its shape {list(shape)} "
                         f"needs {math.prod(shape):,}")
    if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
        raise ServeError(400, f"{INPUT_SOURCE} is UINT8: 'data' must hold integers 0..255")
    return values.astype(np.uint8).reshape(shape)


def _binary_data(size: object, binary: bytes, shape: tuple[int, ...], has_json_data: bool) -> np.ndarray:
    """Binary tensor data: it must be exactly the bytes after the JSON header, and exactly the shape's."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ServeError(400, f"binary_data_size of {INPUT_SOURCE} must be a byte count, got {_short(size)}")
    if has_json_data:
        raise ServeError(400, f"{INPUT_SOURCE} has both 'data' and binary_data_size; send its data one way")
    if size != len(binary):
        raise ServeError(400, f"{INPUT_SOURCE} announces {size:,} bytes of binary data but {len(binary):,} follow "
                         "the JSON header (check Inference-Header-Content-Length and binary_data_size)")
    if size != math.prod(shape):
        raise ServeError(400, f"{INPUT_SOURCE} of shape {list(shape)} needs {math.prod(shape):,} bytes of UINT8 "
                         f"data, but binary_data_size says {size:,}")
    return np.frombuffer(binary, np.uint8).reshape(shape)


def _outputs(value: object, binary_default: bool) -> tuple[RequestedOutput, ...]:
    """The outputs asked, in the request's order; all three when it names none. An output's
    `binary_data` parameter overrides the request's `binary_data_output`."""
    if value is None or value == []:
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUTS)
    if not isinstance(value, list):
        raise ServeError(400, f"'outputs' must be a list of {{\"name\": ...}} objects, got {_short(value)}")
    asked: dict[str, RequestedOutput] = {}
    for item in value:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(item, dict) or not isinstance(name, str) or name not in OUTPUTS:
            raise ServeError(400, f"unknown output {_short(name)}; this model's outputs are {', '.join(OUTPUTS)}")
        if name in asked:
            raise ServeError(400, f"output '{name}' is asked twice; ask each output once")
        where = f"output '{name}'"
        asked[name] = RequestedOutput(name, _flag(_parameters(item.get("parameters"), where), "binary_data",
                                                  binary_default, where))
    return tuple(asked.values())


def _short(value: object) -> str:
    """A value from the request, quoted in an error: one line, never long (a list of a few scalars, such
    as a shape, is quoted; anything bigger is named by its type)."""
    scalars = (str, int, float, bool, type(None))
    small = isinstance(value, scalars) or (isinstance(value, list) and len(value) <= 8
                                           and all(isinstance(v, scalars) for v in value))
    text = json.dumps(value) if small else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


# ---- the answer --------------------------------------------------------------------------------------
def infer_response(answer: TaskAnswer, request: InferRequest) -> InferResponse:
    """The protocol's inference response: the asked outputs of `answer`, as JSON data or as binary
    tensor data after the JSON header, in the order the request asked them."""
    entries: list[dict[str, object]] = []
    blobs: list[bytes] = []
    for output in request.outputs:
        datatype = OUTPUTS[output.name]
        values = np.ascontiguousarray(_output_values(answer, output.name), dtype=NUMPY_TYPES[datatype])
        entry: dict[str, object] = {"name": output.name, "datatype": datatype, "shape": list(values.shape)}
        if output.binary:
            blobs.append(values.tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = values.ravel().tolist()      # JSON floats round-trip float32 exactly
        entries.append(entry)
    doc: dict[str, object] = {"model_name": answer.task, "model_version": answer.version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = entries
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return InferResponse(head + b"".join(blobs), len(head) if blobs else None)


def _output_values(answer: TaskAnswer, name: str) -> np.ndarray:
    return {"logits": answer.logits, "probabilities": answer.probabilities, "class_id": answer.class_ids}[name]


# ---- routes ------------------------------------------------------------------------------------------
def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.mupath
    return state


def _served(state: ServerState, task: str, version: str | None) -> ServedTask:
    """The served task (404 for an unknown or not yet evolved one, naming the served ones) at
    `version` when one is asked (404 for a version it no longer serves)."""
    current = state.registry.current
    resolve(current, [task])
    _check_version(task, version, current.tasks[task].version)
    return current.tasks[task]


def _check_version(task: str, asked: str | None, served: str) -> None:
    if asked is not None and asked != served:
        raise ServeError(404, f"version '{asked}' of model '{task}' is not served; it serves version '{served}' "
                         f"(its retained path): ask /v2/models/{task}/versions/{served}, or leave the version out")


def _check_ready(state: ServerState) -> None:
    if not state.batcher.running:
        raise ServeError(503, "the server is not ready: its inference thread is not running (starting or "
                         "shutting down); try again")


@router.get("/v2", summary="Server metadata (never needs the token)")
async def server_metadata() -> dict[str, object]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


@router.get("/v2/health/live", summary="Liveness: 200 while the server runs (never needs the token)")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Readiness: 200 when requests can be answered (never needs the token)")
async def ready(request: Request) -> Response:
    _check_ready(_state(request))
    return Response(status_code=200)


@router.get("/v2/models/{task}", summary="A task's model metadata: versions, input and outputs")
async def metadata(request: Request, task: str) -> dict[str, object]:
    return model_metadata(_served(_state(request), task, None))


@router.get("/v2/models/{task}/versions/{version}", summary="Model metadata of a version (a retained path id)")
async def version_metadata(request: Request, task: str, version: str) -> dict[str, object]:
    return model_metadata(_served(_state(request), task, version))


@router.get("/v2/models/{task}/ready", summary="Whether a task's model answers")
async def model_ready(request: Request, task: str) -> Response:
    state = _state(request)
    _served(state, task, None)
    _check_ready(state)
    return Response(status_code=200)


@router.get("/v2/models/{task}/versions/{version}/ready", summary="Whether a version of a task's model answers")
async def version_ready(request: Request, task: str, version: str) -> Response:
    state = _state(request)
    _served(state, task, version)
    _check_ready(state)
    return Response(status_code=200)


INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"example": {"id": "1", "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [1, 2, 2, 1],
                                                           "data": [0, 64, 128, 255]}],
                                     "outputs": [{"name": "class_id"}, {"name": "probabilities"}]}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "JSON header, then binary tensor data (its length in "
                                                           "the Inference-Header-Content-Length header)"}}}}}


@router.post("/v2/models/{task}/infer", summary="Logits, probabilities and class ids of images (JSON or binary)",
             openapi_extra=INFER_BODY)
async def infer(request: Request, task: str) -> Response:
    return await _infer(request, task, None)


@router.post("/v2/models/{task}/versions/{version}/infer", summary="Inference by a version (a retained path id)",
             openapi_extra=INFER_BODY)
async def version_infer(request: Request, task: str, version: str) -> Response:
    return await _infer(request, task, version)


async def _infer(request: Request, task: str, version: str | None) -> Response:
    """Refuses what it can before reading a byte, then takes the v1 predict routes' path to the batcher;
    a version that changed while the request waited is refused rather than answered by other weights."""
    state = _state(request)
    _served(state, task, version)
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise ServeError(415, f"compressed request bodies (Content-Encoding: {encoding[:40]}) are not supported; "
                         "send the request uncompressed")
    header_length = request.headers.get(HEADER_LENGTH)

    async def read() -> InferRequest:
        body = await request.body()
        return await run_in_threadpool(parse_infer_request, body, header_length, task, state.config.max_pixels)
    parsed, answer = await answer_request(state, [task], read, lambda r: [r.images])
    _check_version(task, version, answer.answers[0].version)
    response = infer_response(answer.answers[0], parsed)
    headers = commit_headers(answer)
    if response.header_length is None:
        return Response(response.body, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(response.header_length)
    return Response(response.body, media_type="application/octet-stream", headers=headers)
