"""Input pipeline: uint8 images -> float tensors in [-1, 1], 3 channels, the path's image size; and
the reference's augmentations (random-area crop, flip, colour jitter), batched on the CPU."""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, 3, S, S) float32 in [-1, 1]. Grey images are repeated to 3 channels
    as in the reference; resizing is bilinear with antialiasing."""
    x = images.float().div_(127.5).sub_(1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x.contiguous()


def has_augmentation(hp: dict[str, Any]) -> bool:
    """True when the data hyperparameters apply any random transformation."""
    crop = bool(hp.get("ds_crop")) and float(hp.get("ds_area_range_min", 1.0)) < 1.0
    jitter = any(float(hp.get(k, 0.0)) > 0 for k in
                 ("ds_brightness_delta", "ds_contrast_delta", "ds_saturation_delta", "ds_hue_delta"))
    return crop or bool(hp.get("ds_flip_left_right")) or jitter


def _crop_grids(n: int, size: int, hp: dict[str, Any], gen: torch.Generator,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Affine sampling grids for random crops of area in [area_min, 1] and aspect ratio in
    [r, 1/r] (sample_distorted_bounding_box), optionally mirrored. The crop boxes are drawn on the
    CPU (the same stream on every device); only their n x 2 x 3 matrices move to `device`, where
    the grid is built."""
    area = torch.empty(n).uniform_(float(hp["ds_area_range_min"]), 1.0, generator=gen)
    r = float(hp["ds_aspect_ratio_range_min"])
    log_ratio = torch.empty(n).uniform_(math.log(r), -math.log(r), generator=gen)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return F.affine_grid(theta.to(device), [n, 3, size, size], align_corners=False)


def augment(x: torch.Tensor, hp: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    """Random augmentation of a float batch in [-1, 1], controlled by the path's `ds_*` values."""
    n, _, size, _ = x.shape
    if bool(hp.get("ds_crop")) and float(hp.get("ds_area_range_min", 1.0)) < 1.0:
        x = F.grid_sample(x, _crop_grids(n, size, hp, gen, x.device), mode="bilinear",
                          padding_mode="border", align_corners=False)
    if hp.get("ds_flip_left_right"):
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = _colour_jitter(x, hp, gen)
    return x.clamp_(-1.0, 1.0)


def _uniform(n: int, delta: float, gen: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Drawn on the CPU from `gen` (the same stream on every device), then moved to `device`."""
    return torch.empty(n, 1, 1, 1).uniform_(-delta, delta, generator=gen).to(device)


def _colour_jitter(x: torch.Tensor, hp: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if (d := float(hp.get("ds_brightness_delta", 0.0))) > 0:
        x = x + 2 * _uniform(n, d, gen, x.device)              # delta is on a [0, 1] scale
    if (d := float(hp.get("ds_contrast_delta", 0.0))) > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + _uniform(n, d, gen, x.device)) + mean
    if (d := float(hp.get("ds_saturation_delta", 0.0))) > 0:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - grey) * (1 + _uniform(n, d, gen, x.device)) + grey
    if (d := float(hp.get("ds_hue_delta", 0.0))) > 0:
        x = _rotate_hue(x, _uniform(n, d, gen).view(n) * 2 * math.pi)
    return x


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Hue shift as a rotation of the chroma plane in YIQ space (vectorised, differentiable-free)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = (from_yiq @ rot @ to_yiq).to(x.device)       # built on the CPU, with `angle`
    return torch.einsum("nij,njhw->nihw", mat, x)


def batch_iterator(num: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh permutation every epoch (a real example-level shuffle)."""
    while True:
        perm = torch.randperm(num, generator=gen)
        if num < batch_size:
            perm = perm.repeat(math.ceil(batch_size / num))
        for start in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def as_nchw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 numpy -> (N, C, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
