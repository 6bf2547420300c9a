"""Sanity checks of saliency maps: do they change when the model they explain is destroyed?

Sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, section 3, "cascading
randomization"): the layers are re-initialised one after another from the top (classifier, the 1x1
reduction conv, then conv5_4, conv5_3, ... down to a chosen depth) and the maps are recomputed after each
step. A map that explains the model must change as its weights are destroyed; one that stays similar
reflects the input (edges, the bright object) rather than what the model learnt. Similarity is the
Spearman rank correlation and SSIM between the trained and the randomised maps, both at input size.
Two passes of the trained model (identical: 1.0) and one on an input with slight noise give the scale.
Data randomisation (retraining on shuffled labels) is out of scope: it costs a full training run.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from core.faithfulness import upsample_maps
from core.gradcam import explain


# --------------------------------------------------------------------------------------------------
# Similarity of maps
# --------------------------------------------------------------------------------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per map of two stacks (N, H, W) (average ranks for ties).

    A constant map has no ranking: its correlation with a non-constant map is 0, with an equal constant
    map 1 (identical maps) and with a different constant map 0.
    """
    from scipy.stats import rankdata

    a, b = _pair(a, b)
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    out = np.zeros(len(a))
    ok = den > 0
    out[ok] = (ra[ok] * rb[ok]).sum(1) / den[ok]
    same = ~ok & np.all(a.reshape(len(a), -1) == b.reshape(len(b), -1), axis=1)
    out[same] = 1.0
    return np.clip(out, -1.0, 1.0)


def ssim(a: np.ndarray, b: np.ndarray, *, sigma: float = 1.5, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM per map of two stacks (N, H, W) (Wang et al., 2004, eq. 13) with an 11x11 Gaussian window.

    Each map is first scaled to [0, 1] by its own peak (all-zero maps stay zero), since a randomised
    model's maps have an unrelated scale. The border where the window does not fit is left out, as in
    scikit-image; statistics use population (not sample) variances.
    """
    from scipy.ndimage import gaussian_filter

    a, b = _pair(a, b)
    a, b = _unit(a), _unit(b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def filt(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=(0, sigma, sigma), truncate=3.5, mode="reflect")

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    pad = int(3.5 * sigma + 0.5)
    if a.shape[1] > 2 * pad and a.shape[2] > 2 * pad:
        s = s[:, pad:-pad, pad:-pad]
    return s.reshape(len(s), -1).mean(1)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 2 and b.ndim == 2:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"maps must be two stacks (N, H, W) of one shape, got {a.shape} and {b.shape}")
    return a, b


def _unit(x: np.ndarray) -> np.ndarray:
    peak = np.abs(x).reshape(len(x), -1).max(1).reshape(-1, 1, 1)
    return np.divide(x, peak, out=np.zeros_like(x), where=peak > 0)


# --------------------------------------------------------------------------------------------------
# Cascading model randomisation
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One step of the cascade: its name and the module paths re-initialised in that step."""

    name: str
    modules: tuple[str, ...]


def vgg_stages(model: nn.Module, depth: Optional[str] = None) -> list[Stage]:
    """Cascade of a ``SportsVGG``: classifier, reduce, then conv5_4, conv5_3, ... down to ``depth``.

    Convolutions are named after the VGG paper (block_index, counted from the input); ``depth`` is the
    last one to re-initialise (default: conv1_1, all of them).
    """
    stages: list[Stage] = []
    for name in ("classifier", "reduce"):
        sub = getattr(model, name, None)
        if sub is not None:
            paths = tuple(f"{name}.{p}" for p, mod in sub.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d)))
            if paths:
                stages.append(Stage(name, paths))
    convs: list[Stage] = []
    block, within = 1, 0
    for idx, mod in enumerate(getattr(model, "features", [])):
        if isinstance(mod, nn.Conv2d):
            within += 1
            convs.append(Stage(f"conv{block}_{within}", (f"features.{idx}",)))
        elif isinstance(mod, nn.MaxPool2d):
            block, within = block + 1, 0
    names = [s.name for s in convs]
    if depth is not None and depth not in names:
        raise ValueError(f"depth must be one of {names[::-1]}, got {depth!r}")
    cut = names.index(depth) if depth is not None else 0
    return stages + convs[cut:][::-1]


def reinitialise_(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh random weights for every Conv2d/Linear in ``module``: Kaiming normal (ReLU), zero bias."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = torch.empty(m.weight.shape, dtype=m.weight.dtype)
                nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()


@dataclass
class Cascade:
    """Similarity (Spearman, SSIM) per image between the trained maps and each comparison."""

    reference: dict[str, tuple[np.ndarray, np.ndarray]]  # "repeat", "noise" -> (spearman, ssim) (N,)
    stages: list[tuple[Stage, np.ndarray, np.ndarray]] = field(default_factory=list)

    def summary(self) -> list[dict]:
        """Rows {stage, kind, modules, spearman_mean, spearman_std, ssim_mean, ssim_std, n}, references first."""
        rows = []
        items = [(k, "reference", (), sp, ss) for k, (sp, ss) in self.reference.items()]
        items += [(st.name, "randomised", st.modules, sp, ss) for st, sp, ss in self.stages]
        for name, kind, modules, sp, ss in items:
            rows.append(dict(stage=name, kind=kind, modules=list(modules), n=int(len(sp)),
                             spearman_mean=float(np.mean(sp)), spearman_std=float(np.std(sp)),
                             ssim_mean=float(np.mean(ss)), ssim_std=float(np.std(ss))))
        return rows


def _maps_at_input(model, images, targets, layer) -> np.ndarray:
    _, maps = explain(model, images, targets, layer=layer)
    return upsample_maps(maps[:, 0], tuple(images.shape[-2:])).cpu().numpy()


def cascade_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    stages: Sequence[Stage],
    *,
    layer: Optional[str] = None,
    seed: int = 0,
    noise: float = 0.05,
) -> Cascade:
    """Re-initialise ``stages`` one after another (cumulatively) on a copy of ``model``; compare maps.

    targets: (N,) the class each map explains (the trained model's prediction, say), the same at every
    stage. noise: standard deviation, in normalised input units, of the noisy-input reference.
    The model itself is not changed.
    """
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1, 1)
    trained = _maps_at_input(model, images, targets, layer)
    again = _maps_at_input(model, images, targets, layer)
    g = torch.Generator().manual_seed(int(seed))
    noisy_input = images + noise * torch.randn(images.shape, generator=g).to(images.device)
    noisy = _maps_at_input(model, noisy_input, targets, layer)
    result = Cascade(reference={"repeat": (spearman(trained, again), ssim(trained, again)),
                                "noise": (spearman(trained, noisy), ssim(trained, noisy))})
    work = copy.deepcopy(model)
    for stage in stages:
        for path in stage.modules:
            try:
                reinitialise_(work.get_submodule(path), g)
            except AttributeError as exc:
                raise ValueError(f"stage {stage.name}: no module at path {path!r}") from exc
        maps = _maps_at_input(work, images, targets, layer)
        result.stages.append((stage, spearman(trained, maps), ssim(trained, maps)))
    return result
