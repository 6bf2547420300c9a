"""Class-activation maps: Grad-CAM and its kin from one forward pass, their storage and their rendering.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) weights the feature maps ``A`` of a convolutional layer by the spatial mean of
the gradient of a class score ``y_c`` with respect to them:

    alpha_k = 1/Z * sum_ij dy_c / dA_k[i, j]            (eq. 1)
    L_c     = ReLU(sum_k alpha_k * A_k)                 (eq. 2)

``y_c`` is the raw logit, not the softmax probability, as in the paper. The other methods (Grad-CAM++,
XGrad-CAM, LayerCAM, HiResCAM, Eigen-CAM, Score-CAM) are named functions in one table,
``core.cam_methods.METHODS`` (re-exported here); each map gets the same final ReLU.

Layout of this module:

- ``explain`` / ``explain_many`` compute raw maps (float32, the layer's resolution, *not* normalised per
  image, so maps stay comparable across images). "What to explain" is the ``targets`` argument; "how" is
  the method. ``predict_and_explain_many`` explains the predicted class, the true class and, for a
  mistake, the contrast ``logit[pred] - logit[true]``, for several methods at once.
- ``encode_maps`` / ``decode_maps`` (float16 bytes for the store) and ``upsample`` / ``overlay``
  (rendering; normalisation is a display option) live in ``core.cammaps``, which needs no torch, so the
  dashboard can draw maps without importing it; they are re-exported here.

Cost model: one forward pass. The network below the target layer runs under ``torch.no_grad()``, so it
builds no autograd graph; only the layers above it record one, and each target costs one more backward
through those layers alone, shared by all five gradient methods (the rest is arithmetic on the activation
and gradient in hand). Eigen-CAM needs no backward. Score-CAM alone costs more: see ``SCORECAM_COST``.
No gradient ever reaches a parameter's ``.grad``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.cam_methods import (  # noqa: F401 (METHODS, SCORECAM_* re-exported)
    ACTIVATIONS, FORWARDS, GRADIENTS, METHODS, SCORECAM_BATCH, SCORECAM_COST, SCORECAM_MAX_CHANNELS, WEIGHTS,
    CamMethod, check_scorecam_layer, masked_logits,
)
from core import cam_methods
from core.cammaps import (  # noqa: F401 (re-exported)
    COLORMAPS, DEFAULT_METHOD, TARGET_CONTRAST, TARGET_PRED, TARGET_TRUE, TARGETS, check_method, decode_maps,
    encode_maps, overlay, stored_targets, upsample,
)
from core.camlayer import LayerTap, forward_with_tap  # noqa: F401 (LayerTap re-exported)
from core.model import DEFAULT_CAM_LAYER, eval_mode, resolve_module  # noqa: F401 (eval_mode re-exported)

Targets = Union[torch.Tensor, np.ndarray, Sequence[int], Sequence[Sequence[int]]]


# --------------------------------------------------------------------------------------------------
# Computing maps
# --------------------------------------------------------------------------------------------------
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


def check_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """Method names as a tuple without repeats; a ValueError names an unknown one and lists the known."""
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    if not names:
        raise ValueError("methods must name at least one CAM method, got none")
    return tuple(dict.fromkeys(check_method(m) for m in names))


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: Targets | Callable[[torch.Tensor], Targets],
    layer: str | nn.Module | None = None,
    method: str = DEFAULT_METHOD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, maps)`` for a preprocessed batch in one forward pass.

    images: (N, 3, H, W) float tensor, normalised as the model expects; not modified.
    targets: the classes to explain, K per image: a LongTensor or array (N, K) or (N,) for K=1, or
        nested lists; or a callable ``logits -> targets`` to choose them from this forward's logits
        (e.g. the prediction), which avoids a second forward.
    layer: dotted module path (default: ``model.cam_layer`` if the model has one, else ``features.35``)
        or the module itself.
    method: a name of ``METHODS`` (default Grad-CAM).

    logits: (N, num_classes), detached. maps: float32 (N, K, h, w) at the layer's resolution, raw (after
    the method's ReLU, eq. 2) on the raw logit, *not* normalised per image. Both on the model's device.

    The model runs in eval mode (every module's mode is restored afterwards). Grad mode is switched
    on here (``torch.enable_grad()``, outside inference mode), so callers may hold ``torch.no_grad()``
    or ``torch.inference_mode()``. No parameter's ``.grad`` is touched.
    """
    logits, maps = explain_many(model, images, targets, (method,), layer=layer)
    return logits, maps[method]


def explain_many(
    model: nn.Module,
    images: torch.Tensor,
    targets: Targets | Callable[[torch.Tensor], Targets],
    methods: str | Sequence[str],
    layer: str | nn.Module | None = None,
    *,
    scorecam_batch: int = SCORECAM_BATCH,
    scorecam_max_channels: int = SCORECAM_MAX_CHANNELS,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``explain`` for several methods: ``(logits, {method: maps (N, K, h, w)})`` from one forward pass
    and one backward per distinct target column, shared by every gradient method.

    Eigen-CAM's map does not depend on the target: its K maps are equal. Score-CAM adds one forward per
    channel and image (``SCORECAM_COST``), ``scorecam_batch`` masked images at a time, and refuses a layer
    of more than ``scorecam_max_channels`` channels. A target whose gradient is zero everywhere (a constant
    input through a dead layer) gives an all-zero map, never NaN.
    """

    def one_hot(logits: torch.Tensor) -> torch.Tensor:
        chosen = targets(logits) if callable(targets) else targets
        t = _as_targets(chosen, *logits.shape, logits.device)
        return F.one_hot(t, logits.shape[1]).to(logits.dtype)

    return _explain_columns(model, images, one_hot, check_methods(methods), layer,
                            scorecam_batch, scorecam_max_channels)


def _explain_columns(model, images, columns, names, layer, scorecam_batch, scorecam_max_channels):
    """The one forward behind ``explain_many``. ``columns(logits)`` returns the scores to explain as
    weights of the logits (N, K, num_classes): a one-hot row for a class, +1/-1 for a contrast."""
    _check_images(images)
    if layer is None:
        layer = getattr(model, "cam_layer", None) or DEFAULT_CAM_LAYER
    kinds = {METHODS[name].inputs for name in names}
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        logits, acts = forward_with_tap(model, layer, images)
        _check_logits(logits, images.shape[0], layer)
        weights = columns(logits.detach())
        if FORWARDS in kinds:
            check_scorecam_layer(acts.shape[1], scorecam_max_channels)
        grads = _gradients(logits, acts, weights) if GRADIENTS in kinds else None
        with torch.no_grad():
            acts = acts.detach()
            scores = masked_logits(model, images, acts, scorecam_batch) if FORWARDS in kinds else None
            maps = {name: _method_maps(METHODS[name], acts, grads, weights, scores) for name in names}
    return logits.detach(), maps


def _gradients(logits: torch.Tensor, acts: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
    """d (weights[:, k] . logits[n]) / dA[n] for each column k: one backward through the layers above.

    Summing the scores over the batch gives every image's own gradient, since in eval mode image n's
    logits depend on image n alone. A column equal to an earlier one reuses its gradient; an all-zero
    column (a contrast where every prediction is right) has a zero gradient without a backward.
    """
    k_total = weights.shape[1]
    source = [next((j for j in range(k) if torch.equal(weights[:, j], weights[:, k])), None) for k in range(k_total)]
    todo = [k for k in range(k_total) if source[k] is None and bool(weights[:, k].any())]
    grads: list[torch.Tensor] = []
    for k in range(k_total):
        if source[k] is not None:
            grads.append(grads[source[k]])
        elif k in todo:
            (grad,) = torch.autograd.grad(logits, acts, grad_outputs=weights[:, k], retain_graph=k != todo[-1])
            grads.append(grad)
        else:
            grads.append(torch.zeros_like(acts))
    return grads


def _method_maps(method: CamMethod, acts, grads, weights, scores) -> torch.Tensor:
    """One method's maps (N, K, h, w) for every column, after the ReLU of eq. 2, float32."""
    k_total = weights.shape[1]
    if method.inputs == ACTIVATIONS:
        return method.fn(acts).clamp_min(0).float()[:, None].repeat(1, k_total, 1, 1)
    out = []
    for k in range(k_total):
        got = method.fn(acts, grads[k]) if method.inputs == GRADIENTS else method.fn(scores, weights[:, k])
        if method.output == WEIGHTS:
            got = torch.einsum("nc,nchw->nhw", got.to(acts.dtype), acts)  # eq. 2, before its ReLU
        out.append(got)
    return torch.stack(out, dim=1).clamp_min(0).float()


def _check_labels(labels, n: int, topk: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a vector of {n} class indices, got shape {tuple(labels.shape)}")
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    return labels


@dataclass
class Explanation:
    """One forward's predictions and the maps for [predicted class, true class] per image."""

    logits: torch.Tensor  # (N, num_classes)
    probs: torch.Tensor  # (N, num_classes), softmax of logits
    top_probs: torch.Tensor  # (N, k), descending
    top_classes: torch.Tensor  # (N, k)
    pred: torch.Tensor  # (N,), == top_classes[:, 0]
    maps: torch.Tensor  # float32 (N, 2, h, w): [:, 0] for pred, [:, 1] for the true label


def _top(logits: torch.Tensor, topk: int):
    probs = logits.float().softmax(dim=1)
    top_probs, top_classes = probs.topk(min(topk, probs.shape[1]), dim=1)
    return probs, top_probs, top_classes


def predict_and_explain(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    layer: str | nn.Module | None = None,
    topk: int = 5,
    method: str = DEFAULT_METHOD,
) -> Explanation:
    """Predict and explain [pred, true] per image in one forward (see ``explain``).

    Where pred == label the two maps are identical; a caller storing them needs only one.
    """
    labels = _check_labels(labels, images.shape[0], topk)

    def pred_and_true(logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([logits.argmax(dim=1), labels.to(logits.device, torch.long)], dim=1)

    logits, maps = explain(model, images, pred_and_true, layer=layer, method=method)
    probs, top_probs, top_classes = _top(logits, topk)
    return Explanation(logits, probs, top_probs, top_classes, top_classes[:, 0].clone(), maps)


@dataclass
class BatchExplanation:
    """One forward's predictions and, per method, the maps of every target in ``TARGETS`` order."""

    logits: torch.Tensor  # (N, num_classes)
    probs: torch.Tensor  # (N, num_classes), softmax of logits
    top_probs: torch.Tensor  # (N, k), descending
    top_classes: torch.Tensor  # (N, k)
    pred: torch.Tensor  # (N,), == top_classes[:, 0]
    labels: torch.Tensor  # (N,)
    maps: dict[str, torch.Tensor]  # {method: float32 (N, 3, h, w)}: pred, true, contrast (zero where right)

    def targets_of(self, i: int, method: str) -> tuple[str, ...]:
        """The targets the store keeps for image ``i``: "pred" alone for a right prediction or a method
        that explains no class (Eigen-CAM); else "pred", "true" and "contrast"."""
        return stored_targets(method, int(self.pred[i]) == int(self.labels[i]))

    def class_of(self, i: int, target: str) -> int:
        """The class a target's map explains (the contrast: the predicted class, against the true one)."""
        return int(self.labels[i]) if target == TARGET_TRUE else int(self.pred[i])

    def image_maps(self, i: int) -> dict[str, dict[str, np.ndarray]]:
        """``{method: {target: raw float32 map (h, w)}}`` of image ``i``, the targets of ``targets_of``."""
        return {
            method: {t: maps[i, TARGETS.index(t)].cpu().numpy() for t in self.targets_of(i, method)}
            for method, maps in self.maps.items()
        }


def predict_and_explain_many(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    methods: str | Sequence[str],
    layer: str | nn.Module | None = None,
    topk: int = 5,
    *,
    preds: torch.Tensor | Sequence[int] | None = None,
    scorecam_batch: int = SCORECAM_BATCH,
    scorecam_max_channels: int = SCORECAM_MAX_CHANNELS,
) -> BatchExplanation:
    """Predict, and explain for every method the predicted class, the true class and the contrast
    ``logit[pred] - logit[true]`` ("why the prediction and not the true class") in one forward.

    The contrast costs one more backward through the layers above the CAM layer (none when every
    prediction is right); its maps are zero where pred == label. ``preds``: the predicted classes to
    explain, e.g. those a store already holds (default: this forward's argmax); ``pred`` then reports
    them. ``scorecam_*``: as in ``explain_many``.
    """
    labels = _check_labels(labels, images.shape[0], topk)
    given = None if preds is None else _check_labels(preds, images.shape[0], topk)

    def columns(logits: torch.Tensor) -> torch.Tensor:
        true = _as_targets(labels, *logits.shape, logits.device)[:, 0]
        chosen = logits.argmax(dim=1) if given is None else _as_targets(given, *logits.shape, logits.device)[:, 0]
        pred, true = (F.one_hot(c, logits.shape[1]).to(logits.dtype) for c in (chosen, true))
        return torch.stack([pred, true, pred - true], dim=1)  # in TARGETS order

    logits, maps = _explain_columns(model, images, columns, check_methods(methods), layer,
                                    scorecam_batch, scorecam_max_channels)
    probs, top_probs, top_classes = _top(logits, topk)
    pred = top_classes[:, 0].clone() if given is None else given.to(top_classes.device, torch.long)
    right = pred == labels.to(pred.device)
    for m in maps.values():
        m[right, TARGETS.index(TARGET_CONTRAST)] = 0.0
    return BatchExplanation(logits, probs, top_probs, top_classes, pred, labels.to(pred.device), maps)


def layer_channels(model: nn.Module, layer: str | nn.Module, image_size: int) -> int:
    """Channels of ``layer``'s output, from one forward of a blank ``image_size`` image (no gradient)."""
    module = resolve_module(model, layer) if isinstance(layer, str) else layer
    seen: list[int] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(int(out.shape[1])))
    try:
        device = next(model.parameters()).device
        with eval_mode(model), torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"layer {layer!r} did not run in the model's forward")
    return seen[0]


def check_methods_for_layer(model: nn.Module, methods: Sequence[str], layer: str | nn.Module,
                            image_size: int) -> None:
    """Refuse, before any work, a method the layer cannot take: Score-CAM on a layer of more channels than
    ``core.cam_methods.SCORECAM_MAX_CHANNELS`` (one forward per channel and image)."""
    if any(METHODS[m].inputs == FORWARDS for m in check_methods(methods)):
        check_scorecam_layer(layer_channels(model, layer, image_size), cam_methods.SCORECAM_MAX_CHANNELS)
