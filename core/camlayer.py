"""Capturing a CAM layer: its activation as a leaf that requires grad, and logits that depend on it.

The network below the layer runs under ``torch.no_grad()``, so it builds no autograd graph; only the
layers above it record one. ``forward_with_tap`` splits a model at the layer where its layout allows
(``split_at``), else cuts the graph with a forward hook (``LayerTap``).
"""
from __future__ import annotations

import torch
from torch import nn

from core.model import resolve_module


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


def split_at(model: nn.Module, layer: str):
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


def forward_with_tap(model, layer, images):
    """One forward; returns (logits, A) where A is a leaf requiring grad and the logits depend on it."""
    split = split_at(model, layer) if isinstance(layer, str) else None
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
