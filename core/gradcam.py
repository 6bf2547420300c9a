"""Grad-CAM (interim minimal version; replaced by the full engine)."""
from __future__ import annotations

import numpy as np
import torch


def encode_maps(maps: np.ndarray) -> bytes:
    return np.ascontiguousarray(maps, dtype=np.float16).tobytes()


def decode_maps(data: bytes, k: int, h: int, w: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float16).reshape(k, h, w).astype(np.float32)


def pred_true_explainer(layer: str):
    idx = int(layer.split(".")[1])

    def fn(model, x, y):
        with torch.no_grad():
            a = model.features[: idx + 1](x)
        with torch.enable_grad():
            a = a.detach().requires_grad_(True)
            logits = model.head(model.features[idx + 1:](a))
            pred = logits.argmax(1)
            maps = []
            for t in (pred, y):
                g, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), a, retain_graph=True)
                maps.append(torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)))
        return logits.detach(), torch.stack(maps, 1).detach()

    return fn
