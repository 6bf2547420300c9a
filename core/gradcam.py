"""Grad-CAM: raw class-activation maps, their compact storage and their rendering as overlays.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) weights the feature maps ``A`` of a convolutional layer by the spatial mean of
the gradient of a class score ``y_c`` with respect to them:

    alpha_k = 1/Z * sum_ij dy_c / dA_k[i, j]            (eq. 1)
    L_c     = ReLU(sum_k alpha_k * A_k)                 (eq. 2)

``y_c`` is the raw logit, not the softmax probability, as in the paper.

Layout of this module:

- ``explain`` computes raw maps (float32, the layer's resolution, *not* normalised per image, so maps
  stay comparable across images). "What to explain" is the ``targets`` argument;
  "how" is this function.
- ``encode_maps`` / ``decode_maps`` (float16 bytes for the store) and ``upsample`` / ``overlay``
  (rendering; normalisation is a display option) live in ``core.cammaps``, which needs no torch, so the
  dashboard can draw maps without importing it; they are re-exported here.

Cost model: one forward pass. The network below the target layer runs under ``torch.no_grad()``, so it
builds no autograd graph; only the layers above it record one, and each target costs one more backward
through those layers alone. No gradient ever reaches a parameter's ``.grad``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import nn

from core.cammaps import COLORMAPS, decode_maps, encode_maps, overlay, upsample  # noqa: F401 (re-exported)
from core.model import DEFAULT_CAM_LAYER, resolve_module

Targets = Union[torch.Tensor, np.ndarray, Sequence[int], Sequence[Sequence[int]]]



# --------------------------------------------------------------------------------------------------
# Capturing the layer
# --------------------------------------------------------------------------------------------------
class LayerTap:
    """Owns the forward hook that cuts a model's autograd graph at one layer.

    Run the model under ``torch.no_grad()`` with the tap in place: when ``layer`` has run, the hook
    stores its output as a detached leaf that requires grad (``activation``), switches grad mode on
    for the rest of the forward, and hands the layers above a copy of that leaf. The lower part thus
    records no graph, and ``torch.autograd.grad(score, tap.activation)`` is d score / dA.

    The caller's ``no_grad`` context restores the grad mode when it exits. Use the tap as a context
    manager, or call ``release()``; both remove the hook, also when the forward raised.
    """

    def __init__(self, layer: nn.Module):
        self.activation: torch.Tensor | None = None
        self.calls = 0
        self._handles = [layer.register_forward_hook(self._on_forward)]

    def _on_forward(self, module: nn.Module, inputs, output):
        self.calls += 1
        if self.calls > 1:
            raise ValueError(
                f"Grad-CAM layer {type(module).__name__} ran {self.calls} times in one forward; expected once"
            )
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"Grad-CAM layer must output a (N, C, h, w) tensor, got {got}")
        self.activation = output.detach().requires_grad_(True)
        torch.set_grad_enabled(True)
        # A copy, so that an in-place op above (ReLU(inplace=True)) never touches the leaf.
        return self.activation.clone()

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.activation = None

    def __enter__(self) -> "LayerTap":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()  # returns None: an exception raised inside the block propagates


# --------------------------------------------------------------------------------------------------
# Computing maps
# --------------------------------------------------------------------------------------------------
def _split_at(model: nn.Module, layer: str):
    """Return (lower, upper) callables with model(x) == upper(lower(x)) split after ``layer``, or None.

    Two layouts are split directly: an ``nn.Sequential`` model with a top-level index (``"35"``), and a
    model with a Sequential ``features`` and a ``head(feats)`` method whose forward is
    ``head(features(x))`` (``SportsVGG``, layer ``"features.35"``). Other models go through ``LayerTap``.
    """
    parts = layer.split(".")
    if isinstance(model, nn.Sequential) and len(parts) == 1 and parts[0].isdigit() and int(parts[0]) < len(model):
        seq, i = model, int(parts[0])
        return seq[: i + 1], seq[i + 1 :]
    feats, head = getattr(model, "features", None), getattr(model, "head", None)
    if isinstance(feats, nn.Sequential) and callable(head) and len(parts) == 2 and parts[0] == "features":
        if parts[1].isdigit() and int(parts[1]) < len(feats):
            i = int(parts[1])
            rest = feats[i + 1 :]
            return feats[: i + 1], lambda a: head(rest(a))
    return None


def _forward_with_tap(model, layer, images):
    """One forward; returns (logits, A) where A is a leaf requiring grad and the logits depend on it."""
    split = _split_at(model, layer) if isinstance(layer, str) else None
    if split is not None:
        lower, upper = split
        with torch.no_grad():
            acts = lower(images)
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
            raise ValueError(f"Grad-CAM layer {layer!r} must output a (N, C, h, w) tensor")
        acts = acts.detach().requires_grad_(True)
        # Copy for the same reason as in LayerTap: in-place ops above must not modify the leaf.
        return upper(acts.clone()), acts
    module = resolve_module(model, layer) if isinstance(layer, str) else layer
    with LayerTap(module) as tap, torch.no_grad():
        logits = model(images)
        acts = tap.activation
    if acts is None:
        raise ValueError(f"Grad-CAM layer {layer!r} did not run in the model's forward")
    return logits, acts


def _as_targets(targets, n: int, num_classes: int, device) -> torch.Tensor:
    """Validate per-image class indices and return a LongTensor (N, K)."""
    try:
        t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(np.asarray(targets))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"targets must be class indices of shape ({n}, K) with one K for all images: {exc}"
        ) from exc
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != n or t.shape[1] < 1:
        raise ValueError(f"targets must hold K >= 1 class indices per image, shape ({n}, K); got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"targets must be integer class indices, got dtype {t.dtype}")
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got {t.min().item()}..{t.max().item()}")
    return t.to(device=device, dtype=torch.long)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {got}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image, got an empty batch")


def _check_logits(logits, n: int, layer) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return logits (N, num_classes) with N={n}, got {got}")
    if not logits.requires_grad:
        raise ValueError(f"the model's logits do not depend on layer {layer!r} with grad enabled")


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode inside the block; afterwards every module's own mode as before (mixed states too)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: Targets | Callable[[torch.Tensor], Targets],
    layer: str | nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, maps)`` for a preprocessed batch in one forward pass.

    images: (N, 3, H, W) float tensor, normalised as the model expects; not modified.
    targets: the classes to explain, K per image: a LongTensor or array (N, K) or (N,) for K=1, or
        nested lists; or a callable ``logits -> targets`` to choose them from this forward's logits
        (e.g. the prediction), which avoids a second forward.
    layer: dotted module path (default: ``model.cam_layer`` if the model has one, else ``features.35``)
        or the module itself.

    logits: (N, num_classes), detached. maps: float32 (N, K, h, w) at the layer's resolution, raw
    Grad-CAM (eq. 2) on the raw logit, *not* normalised per image. Both on the model's device.

    The model runs in eval mode (every module's mode is restored afterwards). Grad mode is switched
    on here (``torch.enable_grad()``, outside inference mode), so callers may hold ``torch.no_grad()``
    or ``torch.inference_mode()``. No parameter's ``.grad`` is touched.
    """
    _check_images(images)
    if layer is None:
        layer = getattr(model, "cam_layer", None) or DEFAULT_CAM_LAYER
    with _eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        logits, acts = _forward_with_tap(model, layer, images)
        _check_logits(logits, images.shape[0], layer)
        chosen = targets(logits.detach()) if callable(targets) else targets
        alphas = _channel_weights(logits, acts, _as_targets(chosen, *logits.shape, logits.device))
        with torch.no_grad():
            # eq. 2, summing over channels: (N, K, C) x (N, C, h, w) -> (N, K, h, w)
            maps = torch.einsum("nkc,nchw->nkhw", alphas, acts.detach()).clamp_min_(0).float()
    return logits.detach(), maps


def _channel_weights(logits: torch.Tensor, acts: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alpha (N, K, C): eq. 1, the spatial mean of d logit[n, t[n, k]] / dA[n], one backward per target.

    Summing the scores over the batch gives every image's own gradient, since in eval mode image n's
    logits depend on image n alone. Columns equal to an earlier one reuse its weights.
    """
    k_total = t.shape[1]
    alphas: list[torch.Tensor] = []
    for k in range(k_total):
        same = next((j for j in range(k) if torch.equal(t[:, j], t[:, k])), None)
        if same is not None:
            alphas.append(alphas[same])
            continue
        onehot = torch.zeros_like(logits).scatter_(1, t[:, k : k + 1], 1.0)
        last = all(any(torch.equal(t[:, j], t[:, m]) for j in range(m)) for m in range(k + 1, k_total))
        (grad,) = torch.autograd.grad(logits, acts, grad_outputs=onehot, retain_graph=not last)
        alphas.append(grad.mean(dim=(2, 3)))
    return torch.stack(alphas, dim=1)


@dataclass
class Explanation:
    """One forward's predictions and the maps for [predicted class, true class] per image."""

    logits: torch.Tensor  # (N, num_classes)
    probs: torch.Tensor  # (N, num_classes), softmax of logits
    top_probs: torch.Tensor  # (N, k), descending
    top_classes: torch.Tensor  # (N, k)
    pred: torch.Tensor  # (N,), == top_classes[:, 0]
    maps: torch.Tensor  # float32 (N, 2, h, w): [:, 0] for pred, [:, 1] for the true label


def predict_and_explain(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    layer: str | nn.Module | None = None,
    topk: int = 5,
) -> Explanation:
    """Predict and explain [pred, true] per image in one forward (see ``explain``).

    Where pred == label the two maps are identical; a caller storing them needs only one.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must be a vector of {images.shape[0]} class indices, got shape {tuple(labels.shape)}"
        )
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")

    def pred_and_true(logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([logits.argmax(dim=1), labels.to(logits.device, torch.long)], dim=1)

    logits, maps = explain(model, images, pred_and_true, layer=layer)
    probs = logits.float().softmax(dim=1)
    top_probs, top_classes = probs.topk(min(topk, probs.shape[1]), dim=1)
    return Explanation(logits, probs, top_probs, top_classes, top_classes[:, 0].clone(), maps)
