"""Augmentation and normalisation of whole batches of decoded images, on the GPU or in one CPU call.

The draws are those of the JPEG path (core.data.draw_crop, from the generator of each image, seed and epoch)
made in the coordinates of the original image, so a crop covers the same part of the picture on both paths;
only the resampling differs (bilinear grid_sample on the decoded array instead of PIL on the original).
Normalisation repeats core.data.to_tensor's operations in the same order, so evaluation tensors are equal
bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.data import _sample_seed, draw_crop


def draw_crops(relpaths: Sequence[str], wh: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """(k, 5) float64 rows ``x0, y0, crop width, crop height, flip`` in original pixels, one per image:
    the same draws as the JPEG path makes for these files in this epoch."""
    out = np.empty((len(relpaths), 5), dtype=np.float64)
    for j, rel in enumerate(relpaths):
        rng = np.random.default_rng(_sample_seed(seed, epoch, rel))
        out[j] = draw_crop(int(wh[j][0]), int(wh[j][1]), rng)
    return out


def boxes_on_grid(draws: np.ndarray, wh: np.ndarray, side: int) -> np.ndarray:
    """Crop boxes ``x0, y0, x1, y1`` moved from original pixels onto the side x side array."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    sx, sy = side / wh[:, 0], side / wh[:, 1]
    x0, y0, cw, ch = draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3]
    return np.stack([x0 * sx, y0 * sy, (x0 + cw) * sx, (y0 + ch) * sy], axis=1)


_STATS: dict[tuple, torch.Tensor] = {}


def _stats(values, device: torch.device) -> torch.Tensor:
    """Mean or std as a (1, 3, 1, 1) float32 tensor on ``device``, made once."""
    key = (tuple(float(v) for v in values), str(device))
    if key not in _STATS:
        _STATS[key] = torch.tensor(key[0], dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return _STATS[key]


def _check_batch(pixels: torch.Tensor) -> None:
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {tuple(pixels.shape)} {pixels.dtype}")


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, exactly as core.data.to_tensor does image by image."""
    _check_batch(pixels)
    t = pixels.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return (t - _stats(mean, t.device)) / _stats(std, t.device)


def sampling_grid(boxes: torch.Tensor, flips: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """The (B, size, size, 2) grid_sample grid that resizes each box to size x size, mirrored where ``flips``.

    Output pixel j of a box from x0 to x1 samples x0 + (j + 1/2) (x1 - x0) / size in continuous pixel
    coordinates (pixel i covers [i, i + 1)), as PIL's resize with a box does; a flip takes column
    size - 1 - j instead, which is PIL's mirror of the resized crop.
    """
    b = boxes.shape[0]
    j = torch.arange(size, dtype=torch.float32, device=boxes.device) + 0.5
    jx = torch.where(flips.view(b, 1), size - j, j)  # (B, size)
    x0, y0, x1, y1 = boxes.unbind(1)
    gx = 2.0 * (x0[:, None] + jx * ((x1 - x0)[:, None] / size)) / width - 1.0
    gy = 2.0 * (y0[:, None] + j * ((y1 - y0)[:, None] / size)) / height - 1.0
    return torch.stack((gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)), dim=-1)


def resized_crops(pixels: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, mean, std
                  ) -> torch.Tensor:
    """Crop ``boxes`` (B, 4: x0, y0, x1, y1 in pixels of ``pixels``) out of the (B, H, W, 3) uint8 batch,
    resize each to size x size (bilinear, edges repeated), mirror where ``flips`` and normalise: one
    grid_sample for the whole batch.

    Bilinear sampling without averaging is right while a crop is no larger than the output, as with the
    decoded cache, whose side is the image size; much larger crops would alias.
    """
    _check_batch(pixels)
    b, height, width = pixels.shape[:3]
    if boxes.shape != (b, 4) or flips.shape != (b,):
        raise ValueError(f"expected boxes ({b}, 4) and flips ({b},), got {tuple(boxes.shape)} and "
                         f"{tuple(flips.shape)}")
    x = pixels.permute(0, 3, 1, 2).float()
    grid = sampling_grid(boxes.to(x.device, torch.float32), flips.to(x.device), size, height, width)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # (v / 255 - mean) / std in one pass; training needs no bit-for-bit match with to_tensor
    scale = 1.0 / (255.0 * _stats(std, out.device))
    return torch.addcmul(-_stats(mean, out.device) / _stats(std, out.device), out, scale)


def augment_batch(pixels: torch.Tensor, relpaths: Sequence[str], wh: np.ndarray, seed: int, epoch: int,
                  size: int, mean, std) -> torch.Tensor:
    """The training view of a batch of decoded (B, S, S, 3) images: the JPEG path's crops and flips, on the
    device the batch is on."""
    draws = draw_crops(relpaths, wh, seed, epoch)
    boxes = torch.from_numpy(boxes_on_grid(draws, wh, pixels.shape[1]))
    flips = torch.from_numpy(draws[:, 4] > 0.5)
    return resized_crops(pixels, boxes, flips, size, mean, std)
