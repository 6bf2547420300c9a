"""CAM methods: each one named function, all looked up in one table, ``METHODS``.

A method turns what one forward (and, for the gradient methods, one backward per target) left in hand
into a map of one target per image. ``A`` is the layer's activation (N, C, h, w) and ``g`` the gradient of
the target's score with respect to it (same shape). Every method's map is then passed through a ReLU by
the caller, as in Grad-CAM's eq. 2, and kept raw (float32, not scaled per image).

- Channel weights ``w`` (N, C), map ``sum_c w_c A_c``:
  Grad-CAM (Selvaraju et al. 2017, eq. 1), Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19),
  XGrad-CAM (Fu et al. 2020), and Score-CAM (Wang et al. 2020), whose weights come from extra
  forwards of masked inputs (``masked_logits``) rather than from ``g``.
- A map (N, h, w) directly: LayerCAM (Jiang et al. 2021), HiResCAM (Draelos & Carin 2020),
  Eigen-CAM (Muhammad & Yeasin 2020; no gradient, the same map for every target).

``METHODS`` holds exactly the names of ``core.cammaps.METHOD_NAMES``, in that order; pages, jobs and the
store name methods through those names. Adding a method: one function here and one row in ``METHODS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.defaults import SCORECAM_COST  # noqa: F401  (defined there for the --help of the jobs)

# What a method's function takes.
GRADIENTS = "gradients"  # fn(A, g)
ACTIVATIONS = "activations"  # fn(A)
FORWARDS = "forwards"  # fn(channel_logits (N, C, classes), score_weights (N, classes)); see masked_logits
# What it returns.
WEIGHTS = "weights"  # (N, C)
MAP = "map"  # (N, h, w), before the ReLU

# Grad-CAM++'s stabiliser in the denominator of eq. 19, as pytorch-grad-cam uses.
GRADCAMPP_EPS = 1e-6

# Score-CAM runs the whole network once per channel of the CAM layer and image.
SCORECAM_MAX_CHANNELS = 1024
SCORECAM_BATCH = 32


def scorecam_forwards(channels: int, images: int) -> int:
    """Forward passes Score-CAM needs for ``images`` images at a layer of ``channels`` channels (all
    targets share them)."""
    return int(channels) * int(images)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den == 0 (never NaN or inf from a zero denominator)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


# --------------------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------------------
def gradcam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM, eq. 1: the spatial mean of the gradient."""
    return grads.mean(dim=(2, 3))


def gradcampp_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++, eq. 19 with the exponential: for ``Y = exp(S)`` the second and third derivatives of
    ``Y`` are ``g**2`` and ``g**3`` times ``Y``, which gives the closed form

        alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab * g_ij^3),   w = sum_ij alpha_ij * ReLU(g_ij).

    Only cells with g > 0 count (the ReLU); there the denominator is positive for a non-negative
    activation (a ReLU layer). Cells whose denominator is not positive (a layer with negative activations)
    get alpha = 0 rather than a sign flip or a division by zero.
    """
    g2 = grads * grads
    sum_a = acts.sum(dim=(2, 3), keepdim=True)
    den = 2.0 * g2 + sum_a * g2 * grads + GRADCAMPP_EPS
    use = (grads > 0) & (den > 0)
    alpha = torch.where(use, g2 / torch.where(use, den, torch.ones_like(den)), torch.zeros_like(g2))
    return (alpha * grads.clamp_min(0)).sum(dim=(2, 3))


def xgradcam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM: the gradient averaged with weights A / sum(A) over the cells; 0 for a channel
    whose activation sums to 0."""
    return _safe_div((grads * acts).sum(dim=(2, 3)), acts.sum(dim=(2, 3)))


def layercam_map(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM: each cell weighted by its own positive gradient, summed over channels."""
    return (grads.clamp_min(0) * acts).sum(dim=1)


def hirescam_map(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM: the element-wise product of gradient and activation, summed over channels."""
    return (grads * acts).sum(dim=1)


def eigencam_map(acts: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM: the activation's projection on its first principal component (N, h, w), signed.

    Each image's activation is a matrix of h*w cells by C channels; it is centred over the cells (as
    pytorch-grad-cam does; the paper projects the uncentred matrix), and projected on the first right
    singular vector ``v``. The sign of ``v`` is arbitrary in an SVD. We choose the one whose channel
    loadings sum to >= 0, which is the same as asking the map to correlate positively with the layer's
    total activation (cov(X v, X 1) = lambda_1 * sum(v)): the map is high where the layer fires, as the
    paper's uncentred projection of a non-negative activation is. pytorch-grad-cam keeps LAPACK's sign, so
    its map (after its ReLU) is sometimes the mirror image, lit where the layer is quiet.
    """
    n, c, h, w = acts.shape
    x = acts.float().reshape(n, c, h * w).transpose(1, 2)  # the SVD needs float32 (autocast may give half)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[:, 0, :]
    sign = torch.where(v.sum(dim=1) < 0, -1.0, 1.0).to(x.dtype)
    return (x @ v.unsqueeze(-1)).squeeze(-1).mul_(sign[:, None]).reshape(n, h, w)


def scorecam_weights(channel_logits: torch.Tensor, score_weights: torch.Tensor) -> torch.Tensor:
    """Score-CAM: the softmax over channels of the target's score on the input masked by each channel.

    ``channel_logits`` (N, C, classes) from ``masked_logits``; ``score_weights`` (N, classes) the
    target's score as a weighting of the logits (one-hot for a class; +1/-1 for a contrast). The score is
    the raw logit, as in pytorch-grad-cam and in our Grad-CAM; the paper's baseline (the score of a black
    image) is the same for every channel, so the softmax does not change with it.
    """
    return torch.einsum("ncj,nj->nc", channel_logits, score_weights.to(channel_logits.dtype)).softmax(dim=1)


def masked_logits(model: nn.Module, images: torch.Tensor, acts: torch.Tensor,
                  batch_size: int = SCORECAM_BATCH) -> torch.Tensor:
    """Score-CAM's forwards: logits (N, C, classes) of each image masked by each channel of ``acts``.

    Each channel is upsampled to the input (bilinear, corners aligned, as pytorch-grad-cam), scaled to
    [0, 1] over the image (a constant channel gives an all-zero mask), and multiplied into the input.
    ``batch_size`` masked images go through the model at once. Call under ``torch.no_grad()`` in eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"Score-CAM batch size must be at least 1, got {batch_size}")
    out = []
    for image, act in zip(images, acts):
        up = F.interpolate(act[None], size=images.shape[-2:], mode="bilinear", align_corners=True)[0]
        lo = up.amin(dim=(1, 2), keepdim=True)
        masks = _safe_div(up - lo, up.amax(dim=(1, 2), keepdim=True) - lo)
        rows = [model(masks[i : i + batch_size, None] * image[None]) for i in range(0, len(masks), batch_size)]
        out.append(torch.cat(rows).float())
    return torch.stack(out)


def check_scorecam_layer(channels: int, max_channels: int = SCORECAM_MAX_CHANNELS) -> None:
    if channels > max_channels:
        raise ValueError(
            f"Score-CAM needs one forward pass per channel: the CAM layer has {channels} channels, more "
            f"than the limit of {max_channels}; choose a layer with fewer channels or raise the limit"
        )


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CamMethod:
    """One CAM method: what its function takes (``inputs``), what it returns (``output``), and whether
    its map depends on the explained class."""

    name: str
    inputs: str
    output: str
    fn: Callable[..., torch.Tensor]
    class_specific: bool = True


METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("gradcam", GRADIENTS, WEIGHTS, gradcam_weights),
        CamMethod("gradcam++", GRADIENTS, WEIGHTS, gradcampp_weights),
        CamMethod("xgradcam", GRADIENTS, WEIGHTS, xgradcam_weights),
        CamMethod("layercam", GRADIENTS, MAP, layercam_map),
        CamMethod("hirescam", GRADIENTS, MAP, hirescam_map),
        CamMethod("eigencam", ACTIVATIONS, MAP, eigencam_map, class_specific=False),
        CamMethod("scorecam", FORWARDS, WEIGHTS, scorecam_weights),
    )
}
