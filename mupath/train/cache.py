"""Frozen-prefix activation cache. Most of a candidate's path is frozen and shared; when its leading
components (embeddings and the first blocks) are all frozen and the data hyperparameters apply no
random augmentation, their output for every training image never changes. We compute it once per
(task data, image size, prefix component ids) and train only the suffix from it. Entries are shared by
every candidate with the same prefix (also a shorter cached prefix is extended rather than recomputed)
and the cache is bounded in bytes (least recently used entries go first)."""
from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

import safetensors
import torch

from mupath.model.path_model import PathModel
from mupath.train.evaluate import map_batches
from mupath.train.pipeline import to_model_input

CHUNK = 250   #: images per forward when filling the cache (rows are computed independently)


@dataclasses.dataclass(frozen=True)
class Prefix:
    """Cached activations after the first `start` body slots (embeddings included). `fill_seconds`: what
    computing them cost this lookup (0 on a hit): a candidate that finds them cached later does not pay
    it, which is what a time budget plans its last survivor on."""

    start: int
    train: torch.Tensor
    val: torch.Tensor
    fill_seconds: float = 0.0


def frozen_prefix(model: PathModel, owned_ids: set[int], slot_ids: dict[str, str]) -> tuple[str, ...] | None:
    """Component ids of the leading frozen slots (embeddings first), or None when an embedding trains.
    `owned_ids` holds id() of owned modules."""
    for slot in model.embed_slots:
        if id(model.parts[slot]) in owned_ids:
            return None
    ids = [slot_ids[slot] for slot in model.embed_slots]
    for slot in model.body:
        if id(model.parts[slot]) in owned_ids:
            break
        ids.append(slot_ids[slot])
    return tuple(ids)


#: a fill above the run's floor must be read back at least this many times over (in draws of training
#: images and validation passes) by the candidate that makes it, counting one more candidate of the
#: same prefix, else the candidate runs its frozen prefix per batch instead
FILL_PAYBACK = 2


def fill_pays(train_rows: int, val_rows: int, draws: int, validations: int) -> bool:
    """Is filling an entry (every training and validation image through the prefix) cheaper than
    running the prefix on what the candidate reads: `draws` training images and `validations` passes
    over the validation images, FILL_PAYBACK times over? A 33-step first-rung candidate on a
    54,000-image task reads 2,112 images: its fill would cost 25 times its training."""
    return train_rows + val_rows <= FILL_PAYBACK * (draws + validations * val_rows)


class ActivationCache:
    """Byte-bounded LRU of prefix activations, keyed by (data key, image size, prefix ids)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.floors: set[tuple] = set()      #: keys of floor entries: evicted last
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes + v.nbytes for t, v in self.entries.values())

    def _store(self, key: tuple, value: tuple[torch.Tensor, torch.Tensor], *, floor: bool = False) -> None:
        """Keep `value`, evicting least recently used entries to fit; floor entries (`floor`: the run's
        always-frozen bottom, from which every candidate's prefix is extended) go only after every other
        entry, since losing one means a fill from the images again (the costly part: a 54k-image task at
        64 px spends ~90 s there, an entry above the floor a few seconds)."""
        size = value[0].nbytes + value[1].nbytes
        if size > self.max_bytes:
            return
        if floor:
            self.floors.add(key)
        while self.entries and self.nbytes + size > self.max_bytes:
            victim = next((k for k in self.entries if k not in self.floors), next(iter(self.entries)))
            del self.entries[victim]
            self.floors.discard(victim)
        self.entries[key] = value

    def prefix(self, model: PathModel, ids: tuple[str, ...], data_key: str, image_size: int,
               train_x: torch.Tensor, val_x: torch.Tensor, *, floor: int = 0,
               preload: Callable[[], tuple[torch.Tensor, torch.Tensor] | None] | None = None,
               fill: bool = True) -> Prefix | None:
        """Activations after the frozen prefix `ids` for the training images and the (preprocessed)
        validation images, computing only what no cached entry already covers. `floor`: body slots
        that no candidate of the run can own (the run's always-frozen bottom); a fill that passes it
        also keeps the activations there, so that candidates with a shorter prefix than this one
        start from them instead of from the images. `preload`: the floor's activations computed
        elsewhere (`fill_floor`, once for all the pool's workers), or None when they are not there.
        `fill` False: only an entry already there is used (None on a miss; see `fill_pays`)."""
        n_embed = len(model.embed_slots)
        depth = len(ids) - n_embed                 # body slots in the prefix
        if depth < 1 or self.max_bytes <= 0:
            return None
        for k in range(depth, -1, -1):             # longest cached prefix first
            key = (data_key, image_size, ids[:n_embed + k])
            if key in self.entries:
                self.entries.move_to_end(key)
                train, val = self.entries[key]
                if k == depth:
                    self.hits += 1
                    return Prefix(depth, train, val)
                break
        else:
            k, train, val = -1, None, None
        if not fill:
            return None
        self.misses += 1
        started = time.perf_counter()
        loaded = preload() if preload is not None and k < floor <= depth else None
        if loaded is not None:
            train, val = loaded
            self._store((data_key, image_size, ids[:n_embed + floor]), loaded, floor=True)
            k = floor
            if depth == floor:
                return Prefix(depth, train, val, time.perf_counter() - started)
        with torch.no_grad():
            if k < floor < depth:
                train = _run(model, train, train_x, k, floor, image_size, raw=train is None)
                val = _run(model, val, val_x, k, floor, image_size, raw=val is None, preprocessed=True)
                self._store((data_key, image_size, ids[:n_embed + floor]), (train, val), floor=True)
                k = floor
            train = _run(model, train, train_x, k, depth, image_size, raw=train is None)
            val = _run(model, val, val_x, k, depth, image_size, raw=val is None, preprocessed=True)
        self._store((data_key, image_size, ids), (train, val), floor=depth == floor)
        return Prefix(depth, train, val, time.perf_counter() - started)


def _run(model: PathModel, tokens: torch.Tensor | None, images: torch.Tensor, k: int, depth: int,
         image_size: int, *, raw: bool, preprocessed: bool = False, parallel: int = 1) -> torch.Tensor:
    """Body slots [k, depth) over `src` in chunks of CHUNK rows, written into one preallocated tensor (a
    list of chunks and their concatenation would hold the activations twice at the peak). `parallel`
    > 1: that many chunks at once on Python threads, each at the caller's torch thread count, so the
    bits are those of one chunk after another."""
    src = images if raw else tokens
    assert src is not None, "cached activations are needed unless the images run from the start"
    starts = range(0, src.shape[0], CHUNK)

    def chunk_out(i: int) -> torch.Tensor:
        with torch.no_grad():                 # grad mode is per thread
            chunk = src[i:i + CHUNK]
            if raw:
                x = chunk if preprocessed else to_model_input(chunk, image_size)
                x, start = model.embed(x), 0
            else:
                x, start = chunk, k
            for slot in model.body[start:depth]:
                x = model.run(slot, x)
            return x

    out: torch.Tensor | None = None
    for i, x in zip(starts, map_batches(chunk_out, starts, parallel)):
        if out is None:
            out = torch.empty((src.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        out[i:i + x.shape[0]] = x
    return out if out is not None else torch.zeros(0)


def fill_floor(model: PathModel, train_x: torch.Tensor, val_x: torch.Tensor, image_size: int, floor: int,
               parallel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The activations after the embeddings and the first `floor` body slots, for the training images
    and the (preprocessed) validation images: what `ActivationCache.prefix` computes for a floor,
    here on `parallel` threads at once (one process filling it for several workers)."""
    train = _run(model, None, train_x, -1, floor, image_size, raw=True, parallel=parallel)
    val = _run(model, None, val_x, -1, floor, image_size, raw=True, preprocessed=True, parallel=parallel)
    return train, val


def load_floor(path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A floor fill written by `runtime.prefill`, or None when it is gone (the worker then fills its own)."""
    from safetensors.torch import load_file

    try:
        data = load_file(path)
    except (OSError, safetensors.SafetensorError):
        return None
    return data["train"], data["val"]


_PROCESS_CACHE: ActivationCache | None = None


def process_cache(max_bytes: int) -> ActivationCache:
    """One cache per process (shared by the candidates this worker trains)."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None or _PROCESS_CACHE.max_bytes != max_bytes:
        _PROCESS_CACHE = ActivationCache(max_bytes)
    return _PROCESS_CACHE
