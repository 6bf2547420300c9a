"""Faithfulness of a saliency map: deletion and insertion curves against trivial baselines.

Faithfulness (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018, section 4.1). The pixels of an image are ordered by a saliency map, upsampled to the input
size, most important first. In ``S`` steps a growing fraction ``k / S`` of them is

- *deleted*: replaced by the fill (default: zeros of the normalised input, i.e. the dataset's mean
  colour, as RISE's deletion metric does), starting from the image; or
- *inserted*: copied from the image into a blurred copy of it (RISE's insertion metric), starting from
  the blurred image.

After each step the model's softmax probability of the explained class is recorded. The area under each
curve (trapezoid rule over the fraction in [0, 1]) is the score: a faithful map makes the probability
fall fast on deletion (low AUC) and rise fast on insertion (high AUC).

The same curves for two maps that know nothing of the model give the scale: a seeded *random* map and
a *centre* map (a Gaussian centred on the image, since photographers centre their subject). Both are
drawn at the CAM maps' own resolution and upsampled the same way, so every map deletes pixels in blobs
of the same size. ``faithfulness_many`` scores the maps of several CAM methods beside both baselines in
one batched pass; ``METHODS`` names everything it can score (``core.cammaps`` names).

Ties. A map with equal values (a constant map, the zero plateau of a ReLU'd Grad-CAM) has no order among
them. Ties are broken by the random baseline's map of the same image (and seed), so a constant map is
scored *exactly* like the random baseline, and the zero region of a Grad-CAM map is deleted in a random,
blob-shaped order. Values closer than 2**-20 of a map's peak count as equal, so interpolation round-off
does not break a tie.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.cammaps import BASELINE_CENTRE, BASELINE_RANDOM, BASELINES, DEFAULT_METHOD, METHOD_NAMES, check_method
from core.defaults import FILLS
from core.model import eval_mode

METHODS = METHOD_NAMES + BASELINES  # the CAM methods, then the two baselines
TIE_RESOLUTION = 2.0**-20  # relative to a map's peak


# --------------------------------------------------------------------------------------------------
# Curves and their area
# --------------------------------------------------------------------------------------------------
def auc(curves: np.ndarray, fractions: Optional[np.ndarray] = None) -> np.ndarray:
    """Trapezoid area under curves (..., S+1) over ``fractions`` (default: 0, 1/S, ..., 1)."""
    y = np.asarray(curves, dtype=np.float64)
    if y.ndim < 1 or y.shape[-1] < 2:
        raise ValueError(f"curves must have at least 2 points on the last axis, got shape {y.shape}")
    x = np.linspace(0.0, 1.0, y.shape[-1]) if fractions is None else np.asarray(fractions, dtype=np.float64)
    if x.shape != (y.shape[-1],) or np.any(np.diff(x) < 0):
        raise ValueError(f"fractions must be {y.shape[-1]} non-decreasing values, got {x.shape}")
    return ((y[..., 1:] + y[..., :-1]) * np.diff(x) / 2.0).sum(-1)


@dataclass
class Curves:
    """Deletion and insertion curves of M maps per image: arrays (N, M, S+1) of class probability."""

    deletion: np.ndarray
    insertion: np.ndarray
    fractions: np.ndarray  # (S+1,) the fraction of pixels removed / revealed at each point

    @property
    def deletion_auc(self) -> np.ndarray:
        return auc(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> np.ndarray:
        return auc(self.insertion, self.fractions)


# --------------------------------------------------------------------------------------------------
# Baseline maps and the blurred image
# --------------------------------------------------------------------------------------------------
def random_maps(seeds: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
    """Uniform noise (N, h, w), one seeded generator per image, so a map does not depend on the batch."""
    h, w = size
    return torch.from_numpy(
        np.stack([np.random.default_rng(int(s)).random((h, w)) for s in seeds]).astype(np.float32)
    )


def centre_map(size: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """A Gaussian (h, w) centred on the map, standard deviation ``sigma`` times the side."""
    h, w = size
    yy = (torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5
    xx = (torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5
    return torch.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * sigma**2))


def default_blur_sigma(height: int, width: int) -> float:
    """Blur of the insertion start: 1/16 of the shorter side (14 px at 224): the object's shape goes,
    its colour stays."""
    return max(1.0, min(height, width) / 16.0)


def blur(images: torch.Tensor, sigma: Optional[float] = None) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), reflected at the border; a new tensor."""
    h, w = images.shape[-2:]
    sigma = default_blur_sigma(h, w) if sigma is None else float(sigma)
    if sigma <= 0:
        return images.clone()
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False, as ``core.cammaps.upsample``) resize of (..., h, w) maps."""
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


# --------------------------------------------------------------------------------------------------
# Pixel order
# --------------------------------------------------------------------------------------------------
def pixel_ranks(saliency: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """Rank (B, P) of every pixel, 0 = most important: by saliency, ties by ``tiebreak``, both descending.

    Saliency values are quantised to ``TIE_RESOLUTION`` of each map's peak first (see the module doc).
    """
    if saliency.shape != tiebreak.shape or saliency.dim() != 2:
        raise ValueError(f"saliency and tiebreak must both be (B, P), got {tuple(saliency.shape)} "
                         f"and {tuple(tiebreak.shape)}")
    s = saliency.double()
    peak = s.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    s = torch.round(s / peak / TIE_RESOLUTION)
    first = torch.argsort(tiebreak, dim=1, descending=True, stable=True)
    second = torch.argsort(torch.gather(s, 1, first), dim=1, descending=True, stable=True)
    order = torch.gather(first, 1, second)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


# --------------------------------------------------------------------------------------------------
# Running the model on perturbed inputs
# --------------------------------------------------------------------------------------------------
def _probs(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return model(x).float().softmax(dim=1).gather(1, classes[:, None])[:, 0]


def perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    *,
    tiebreak: torch.Tensor,
    steps: int = 16,
    fill: str = "mean",
    blur_sigma: Optional[float] = None,
    chunk: int = 64,
) -> Curves:
    """Deletion and insertion curves for M saliency maps per image, all images batched together.

    images: (N, C, H, W) normalised as the model expects; not modified.
    maps: (N, M, h, w) saliency maps at any resolution (upsampled bilinearly to H x W).
    targets: (N,) class whose probability is recorded for each image.
    tiebreak: (N, h', w') map whose order breaks ties (normally the random baseline of each image).
    steps: S, the number of steps from nothing to everything; curves have S+1 points.
    fill: what deleted pixels become: "mean" (zeros, the dataset mean after normalisation) or "blur".
    chunk: perturbed inputs per forward pass.

    The unperturbed, fully deleted and fully blurred inputs do not depend on the map, so they run once per
    image; the N * M * 2 * (S - 1) inputs in between are built chunk by chunk, never all at once.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {getattr(images, 'shape', images)}")
    n, _, height, width = images.shape
    if maps.dim() != 4 or maps.shape[0] != n:
        raise ValueError(f"maps must be (N={n}, M, h, w), got {tuple(maps.shape)}")
    if steps < 1 or chunk < 1:
        raise ValueError(f"steps and chunk must be at least 1, got steps={steps}, chunk={chunk}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if tiebreak.dim() != 3 or tiebreak.shape[0] != n:
        raise ValueError(f"tiebreak must be (N={n}, h, w), got {tuple(tiebreak.shape)}")
    device = images.device
    classes = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    if classes.shape != (n,):
        raise ValueError(f"targets must hold one class per image ({n}), got shape {tuple(classes.shape)}")
    m = maps.shape[1]
    pixels = height * width
    sal = upsample_maps(maps.to(device), (height, width)).reshape(n * m, pixels)
    tie = upsample_maps(tiebreak.to(device), (height, width)).reshape(n, 1, pixels).expand(n, m, pixels)
    ranks = pixel_ranks(sal, tie.reshape(n * m, pixels))
    removed = torch.round(torch.arange(steps + 1, device=device) * pixels / steps).long()  # pixels per step

    with eval_mode(model), torch.inference_mode():
        blurred = blur(images, blur_sigma)
        filled = blurred if fill == "blur" else torch.zeros_like(images)
        start_p = torch.cat([_probs(model, x, c) for x, c in _batches(chunk, images, classes)])
        blur_p = torch.cat([_probs(model, x, c) for x, c in _batches(chunk, blurred, classes)])
        if fill == "blur":
            fill_p = blur_p
        else:
            fill_p = model(filled[:1]).float().softmax(1)[0, classes]  # the same input for every image
        deletion = torch.empty(n, m, steps + 1, device=device)
        insertion = torch.empty_like(deletion)
        deletion[:, :, 0], deletion[:, :, steps] = start_p[:, None], fill_p[:, None]
        insertion[:, :, 0], insertion[:, :, steps] = blur_p[:, None], start_p[:, None]
        # One task per (map row b = image * M + method, curve, interior step).
        b, kind, k = torch.meshgrid(torch.arange(n * m), torch.arange(2), torch.arange(1, steps), indexing="ij")
        b, kind, k = b.reshape(-1).to(device), kind.reshape(-1).to(device), k.reshape(-1).to(device)
        for lo in range(0, b.numel(), chunk):
            bb, kk, ss = b[lo : lo + chunk], kind[lo : lo + chunk], k[lo : lo + chunk]
            img = bb // m
            mask = (ranks[bb] < removed[ss][:, None]).view(-1, 1, height, width)
            is_del = (kk == 0).view(-1, 1, 1, 1)
            base = torch.where(is_del, images[img], blurred[img])  # where each curve starts
            swap = torch.where(is_del, filled[img], images[img])  # what the chosen pixels become
            p = _probs(model, torch.where(mask, swap, base), classes[img])
            rows, cols = img, bb % m
            dsel, isel = kk == 0, kk == 1
            deletion[rows[dsel], cols[dsel], ss[dsel]] = p[dsel]
            insertion[rows[isel], cols[isel], ss[isel]] = p[isel]
    fractions = (removed.double() / pixels).cpu().numpy()
    return Curves(deletion.cpu().numpy(), insertion.cpu().numpy(), fractions)


def _batches(chunk: int, *tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    for lo in range(0, tensors[0].shape[0], chunk):
        yield tuple(t[lo : lo + chunk] for t in tensors)


def baseline_maps(seeds: Sequence[int], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The two baselines (N, h, w) at the CAM maps' resolution: "random" (seeded) and "centre"."""
    rand = random_maps(seeds, size)
    return {BASELINE_RANDOM: rand, BASELINE_CENTRE: centre_map(size).expand(len(seeds), *size).clone()}


def faithfulness_many(
    model: nn.Module,
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    targets: torch.Tensor | Sequence[int],
    seeds: Sequence[int],
    **kwargs,
) -> dict[str, Curves]:
    """Curves of each CAM method's maps (``{method: (N, h, w)}``, all of one size) and of both baselines, in
    one batched pass; ``kwargs`` go to ``perturbation_curves``.

    ``seeds`` (one per image, e.g. its id in the store) seed the random baseline, which also breaks ties.
    Returns ``{method: Curves, ..., "random": Curves, "centre": Curves}`` with M = 1 in each.
    """
    if not maps:
        raise ValueError("maps must hold at least one CAM method's maps, got none")
    names = [check_method(m) for m in maps]
    shapes = {tuple(m.shape) for m in maps.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"maps must all be (N, h, w) of one shape, got {sorted(shapes)}")
    n, h, w = next(iter(shapes))
    if len(seeds) != n:
        raise ValueError(f"seeds must hold one seed per image ({n}), got {len(seeds)}")
    base = baseline_maps(seeds, (h, w))
    stack = torch.stack([maps[m].float().cpu() for m in names] + [base[b] for b in BASELINES], dim=1)
    c = perturbation_curves(model, images, stack, targets, tiebreak=base[BASELINE_RANDOM], **kwargs)
    return {
        name: Curves(c.deletion[:, j : j + 1], c.insertion[:, j : j + 1], c.fractions)
        for j, name in enumerate(names + list(BASELINES))
    }


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    gradcam: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    seeds: Sequence[int],
    **kwargs,
) -> dict[str, Curves]:
    """``faithfulness_many`` of the Grad-CAM maps (N, h, w) alone: {"gradcam", "random", "centre"}."""
    if gradcam.dim() != 3:
        raise ValueError(f"gradcam must be (N, h, w) maps, got shape {tuple(gradcam.shape)}")
    return faithfulness_many(model, images, {DEFAULT_METHOD: gradcam}, targets, seeds, **kwargs)
