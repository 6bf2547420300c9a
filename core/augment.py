"""Augmentation and normalisation of whole batches of decoded images, on the GPU or in one CPU call.

The draws are those of the JPEG path (core.data.draw_crop, from the generator of each image, seed and epoch)
made in the coordinates of the original image, so a crop covers the same part of the picture on both paths;
only the resampling differs (torchvision's roi_align on the decoded array instead of PIL on the original).
Normalisation repeats core.data.to_tensor's operations in the same order, so evaluation tensors are equal
bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

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


def _stats(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1).to(like.device)


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, exactly as core.data.to_tensor does image by image."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {tuple(pixels.shape)} {pixels.dtype}")
    t = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    return (t - _stats(mean, t)) / _stats(std, t)


def resized_crops(pixels: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, mean, std
                  ) -> torch.Tensor:
    """Crop ``boxes`` (B, 4: x0, y0, x1, y1 in pixels of ``pixels``) out of the (B, H, W, 3) uint8 batch,
    resize each to size x size (bilinear; averaging several samples per output pixel where it shrinks),
    mirror where ``flips``, round to whole levels as PIL does, and normalise. One call for the batch."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {tuple(pixels.shape)} {pixels.dtype}")
    b = pixels.shape[0]
    if boxes.shape != (b, 4) or flips.shape != (b,):
        raise ValueError(f"expected boxes ({b}, 4) and flips ({b},), got {tuple(boxes.shape)} and "
                         f"{tuple(flips.shape)}")
    x = pixels.permute(0, 3, 1, 2).float().contiguous()
    ids = torch.arange(b, dtype=torch.float32, device=x.device).unsqueeze(1)
    rois = torch.cat([ids, boxes.to(device=x.device, dtype=torch.float32)], dim=1)
    # aligned=True: pixel i covers [i, i + 1), as PIL's resize box does.
    out = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    out = out.round_().clamp_(0, 255)
    out = torch.where(flips.to(x.device).view(b, 1, 1, 1), out.flip(-1), out)
    out = out.div_(255.0)
    return (out - _stats(mean, out)) / _stats(std, out)


def augment_batch(pixels: torch.Tensor, relpaths: Sequence[str], wh: np.ndarray, seed: int, epoch: int,
                  size: int, mean, std) -> torch.Tensor:
    """The training view of a batch of decoded (B, S, S, 3) images: the JPEG path's crops and flips, on the
    device the batch is on."""
    draws = draw_crops(relpaths, wh, seed, epoch)
    boxes = torch.from_numpy(boxes_on_grid(draws, wh, pixels.shape[1]))
    flips = torch.from_numpy(draws[:, 4] > 0.5)
    return resized_crops(pixels, boxes, flips, size, mean, std)
