"""Grad-CAM: shapes, agreement with pytorch-grad-cam, hooks, memory, graph extent, storage and overlays."""
from __future__ import annotations

import gc
import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from core.gradcam import (
    COLORMAPS,
    LayerTap,
    decode_maps,
    encode_maps,
    explain,
    overlay,
    predict_and_explain,
    upsample,
)
from core.model import SportsVGG

NUM_CLASSES = 4
SIZE = 64  # features.35 is 4x4 at 64 px


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def quadrant_images(n: int, generator: torch.Generator, size: int = SIZE):
    """Noise with a bright square; the class is the quadrant that holds the square."""
    x = torch.randn(n, 3, size, size, generator=generator) * 0.3
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    side = size // 4
    for i, q in enumerate(y.tolist()):
        top = (q // 2) * size // 2 + int(torch.randint(0, size // 2 - side, (1,), generator=generator))
        left = (q % 2) * size // 2 + int(torch.randint(0, size // 2 - side, (1,), generator=generator))
        x[i, :, top : top + side, left : left + side] += 2.0
    return x, y


@pytest.fixture(scope="module")
def trained():
    """SportsVGG(4) with its head trained for 30 steps on quadrant images (base frozen, as in phase 1)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = SportsVGG(NUM_CLASSES)
    x, y = quadrant_images(64, g)
    with torch.no_grad():
        feats = model.features(x)  # the frozen base runs once; the head trains on its output
    opt = torch.optim.Adam(model.head_parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, len(y), (32,), generator=g)
        loss = nn.functional.cross_entropy(model.head(feats[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def batch():
    return quadrant_images(32, torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(3)
    return SportsVGG(5).eval()


class Wrapped(nn.Module):
    """A model that is neither Sequential nor features+head: explain must use LayerTap."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def hook_count(model: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, name)) for m in model.modules() for name in names)


def live_tensors() -> int:
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, targets, expected",
    [
        (64, torch.tensor([[0, 1], [2, 2], [4, 3]]), (3, 2, 4, 4)),
        (64, [[0, 1, 2], [1, 2, 3], [2, 3, 4]], (3, 3, 4, 4)),
        (64, [4, 0, 1], (3, 1, 4, 4)),
        (224, [[1, 3]], (1, 2, 14, 14)),
    ],
)
def test_shapes(small_model, size, targets, expected):
    x = torch.randn(expected[0], 3, size, size, generator=torch.Generator().manual_seed(0))
    logits, maps = explain(small_model, x, targets)
    assert logits.shape == (expected[0], 5)
    assert maps.shape == expected and maps.dtype == torch.float32
    assert (maps >= 0).all()


class RawGradCAM:
    """pytorch-grad-cam's GradCAM, keeping its map after its ReLU and before its per-image scaling."""

    def __new__(cls, model, layer):
        from pytorch_grad_cam import GradCAM

        class Raw(GradCAM):
            def get_cam_image(self, *args, **kwargs):
                cam = super().get_cam_image(*args, **kwargs)
                self.raw = np.maximum(cam, 0)  # as in BaseCAM.compute_cam_per_layer
                return cam

        return Raw(model=model, target_layers=[layer])


def test_matches_pytorch_grad_cam(trained, batch):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, y = batch
    # Every other image gets a wrong "true" label, as for the model's mistakes: pred != true there.
    true = torch.where(torch.arange(len(y)) % 2 == 0, y, (y + 1) % NUM_CLASSES)
    logits, maps = explain(trained, x, lambda lg: torch.stack([lg.argmax(1), true], 1))
    pred = logits.argmax(1)
    assert (pred != true).sum() >= 8
    ours = maps.numpy()
    with RawGradCAM(trained, trained.features[35]) as cam:
        theirs = []
        for column in (pred, true):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in column])
            theirs.append(cam.raw)
    theirs = np.stack(theirs, axis=1)
    trained.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills .grad

    assert theirs.shape == ours.shape == (32, 2, 4, 4)
    peaks = ours.reshape(32, 2, -1).max(-1)
    assert (peaks > 0).mean() >= 0.75, "maps are degenerate: too many all-zero maps"
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5 * float(theirs.max()))
    for a, b in zip(ours.reshape(64, -1), theirs.reshape(64, -1)):
        if a.std() > 0 and b.std() > 0:
            assert np.corrcoef(a, b)[0, 1] >= 0.999
            assert a.argmax() == b.argmax()
        else:
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_hook_path_matches_split_path(trained, batch):
    x, y = batch[0][:6], batch[1][:6]
    logits, maps = explain(trained, x, y)
    wrapped = Wrapped(trained)
    logits2, maps2 = explain(wrapped, x, y, layer="inner.features.35")
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(maps2, maps)
    # A layer followed by an in-place ReLU: both paths keep their captured activation intact.
    _, conv_maps = explain(trained, x, y, layer="features.34")
    _, conv_maps2 = explain(wrapped, x, y, layer="inner.features.34")
    torch.testing.assert_close(conv_maps2, conv_maps)
    _, module_maps = explain(trained, x, y, layer=trained.features[35])  # a module, not a path
    torch.testing.assert_close(module_maps, maps)
    assert hook_count(wrapped) == 0


def test_sequential_model_is_split():
    torch.manual_seed(4)
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    x = torch.randn(5, 3, 12, 12)
    _, maps = explain(seq, x, [0, 1, 2, 0, 1], layer="3")
    _, maps2 = explain(Wrapped(seq), x, [0, 1, 2, 0, 1], layer="inner.3")
    assert maps.shape == (5, 1, 12, 12)
    torch.testing.assert_close(maps, maps2)


@pytest.mark.parametrize(
    "case",
    ["ok", "target out of range", "bad input channels", "layer never runs", "error inside with"],
)
def test_hooks_released(small_model, case):
    model = Wrapped(small_model)
    x = torch.randn(2, 3, 64, 64)
    if case == "ok":
        explain(model, x, [0, 1], layer="inner.features.35")
    elif case == "target out of range":
        with pytest.raises(ValueError, match="targets"):
            explain(model, x, [0, 9], layer="inner.features.35")
    elif case == "bad input channels":
        with pytest.raises(RuntimeError):
            explain(model, torch.randn(2, 4, 64, 64), [0, 1], layer="inner.features.35")
    elif case == "layer never runs":
        model.inner.extra = nn.Linear(1, 1)  # registered, never called
        with pytest.raises(ValueError, match="did not run"):
            explain(model, x, [0, 1], layer="inner.extra")
        del model.inner.extra
    else:
        with pytest.raises(KeyError):
            with LayerTap(small_model.features[35]) as tap:
                assert hook_count(small_model) == 1
                raise KeyError("raised inside the block")
        assert tap.activation is None
    assert hook_count(model) == 0


def test_memory_flat_and_no_graph_kept(small_model):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    targets = [[0, 1], [2, 3]]
    for _ in range(3):  # warm-up: allocator pools, thread pools
        explain(small_model, x, targets)
    gc.collect()
    rss0 = rss_bytes()
    tensors0 = live_tensors()
    for _ in range(30):
        logits, maps = explain(small_model, x, targets)
        assert logits.grad_fn is None and maps.grad_fn is None
        assert not logits.requires_grad and not maps.requires_grad
    del logits, maps
    gc.collect()
    tensors1 = live_tensors()
    # A graph through VGG-19's base holds > 10 MB here; keeping one per call would add > 300 MB.
    # The bound leaves room for the allocator of a long test session (RSS near 1.7 GB there grew 62 MB).
    assert rss_bytes() - rss0 < 150 * 2**20
    assert tensors1 <= tensors0


def test_lower_part_has_no_graph(trained, batch):
    trained.zero_grad(set_to_none=True)
    saved_shapes = []

    def pack(t):
        saved_shapes.append(tuple(t.shape))
        return t

    x = batch[0][:4]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, maps = explain(trained, x, [[0, 1]] * 4)
    h, w = maps.shape[-2:]
    assert saved_shapes, "the layers above the target layer should record a graph"
    spatial = [s[-2:] for s in saved_shapes if len(s) == 4]
    # Only the layers above features.35 (h x w and smaller) saved anything for backward.
    assert all(sh <= h and sw <= w for sh, sw in spatial), saved_shapes
    assert all(p.grad is None for p in trained.parameters())


def test_inputs_unchanged_and_modes_restored(small_model):
    x = torch.randn(2, 3, 64, 64)
    x_before = x.clone()
    targets = torch.tensor([[1, 2], [3, 4]])
    targets_before = targets.clone()
    small_model.train()
    small_model.classifier[1].eval()  # a mixed state must come back as it was
    modes = [m.training for m in small_model.modules()]
    explain(small_model, x, targets)
    explain(Wrapped(small_model), x, targets, layer="inner.features.35")
    assert [m.training for m in small_model.modules()] == modes
    small_model.eval()
    assert torch.equal(x, x_before) and torch.equal(targets, targets_before)


def test_train_mode_gives_eval_maps(small_model):
    x = torch.randn(3, 3, 64, 64)
    _, maps_eval = explain(small_model, x, [0, 1, 2])
    small_model.train()
    _, maps_train = explain(small_model, x, [0, 1, 2])  # Dropout would change these if left on
    small_model.eval()
    torch.testing.assert_close(maps_train, maps_eval)


def test_under_inference_mode_and_no_grad(small_model):
    x = torch.randn(2, 3, 64, 64)
    _, expected = explain(small_model, x, [1, 2])
    with torch.inference_mode():
        xi = x.clone()
        logits, maps = explain(small_model, xi, [1, 2])
    torch.testing.assert_close(maps, expected)
    assert not maps.is_inference() and not logits.is_inference()  # usable outside inference mode
    with torch.no_grad():
        _, maps = explain(Wrapped(small_model), x, [1, 2], layer="inner.features.35")
    torch.testing.assert_close(maps, expected)


@pytest.mark.parametrize(
    "targets, match",
    [
        ([0, 5], r"\[0, 5\)"),
        ([[0, 1]], r"shape \(2, K\)"),
        ([0.5, 1.0], "integer"),
        (torch.zeros(2, 0, dtype=torch.long), "K >= 1"),
        ([[0, 1], [2]], "one K for all images"),
    ],
)
def test_bad_targets(small_model, targets, match):
    with pytest.raises(ValueError, match=match):
        explain(small_model, torch.randn(2, 3, 64, 64), targets)


def test_bad_images(small_model):
    with pytest.raises(ValueError, match="float tensor"):
        explain(small_model, torch.zeros(3, 64, 64), [0])
    with pytest.raises(ValueError, match="float tensor"):
        explain(small_model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8), [0])


def test_predict_and_explain(trained, batch):
    x, y = batch[0][:6], batch[1][:6]
    labels = y.clone()
    labels[0] = (labels[0] + 1) % NUM_CLASSES
    out = predict_and_explain(trained, x, labels, topk=3)
    assert out.maps.shape == (6, 2, 4, 4)
    assert out.top_classes.shape == out.top_probs.shape == (6, 3)
    assert torch.equal(out.pred, out.logits.argmax(1)) and torch.equal(out.pred, out.top_classes[:, 0])
    torch.testing.assert_close(out.probs.sum(1), torch.ones(6))
    _, maps = explain(trained, x, torch.stack([out.pred, labels], 1))
    torch.testing.assert_close(out.maps, maps)
    same = out.pred == labels
    assert torch.equal(out.maps[same, 0], out.maps[same, 1])
    assert not torch.equal(out.maps[~same, 0], out.maps[~same, 1])
    assert predict_and_explain(trained, x, labels, topk=50).top_classes.shape == (6, NUM_CLASSES)


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
def test_encode_decode_round_trip():
    maps = np.random.default_rng(0).gamma(2.0, 0.5, size=(2, 14, 14)).astype(np.float32)
    data = encode_maps(maps)
    assert isinstance(data, bytes) and len(data) == 784
    back = decode_maps(data, 2, 14, 14)
    assert back.dtype == np.float32 and back.shape == (2, 14, 14)
    np.testing.assert_allclose(back, maps, rtol=2**-11, atol=2**-24)


def test_storage_validation():
    with pytest.raises(ValueError, match="784 bytes, got 783"):
        decode_maps(b"\0" * 783, 2, 14, 14)
    with pytest.raises(ValueError, match=r"\(K, h, w\)"):
        encode_maps(np.zeros((14, 14), np.float32))
    with pytest.raises(ValueError, match="float16"):
        encode_maps(np.full((1, 2, 2), 1e6, np.float32))
    with pytest.raises(ValueError, match="finite"):
        encode_maps(np.full((1, 2, 2), np.nan, np.float32))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def test_overlay_shape_dtype_and_input_untouched():
    rgb = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    before = rgb.copy()
    out = overlay(rgb, np.random.default_rng(2).random((4, 6)))
    assert out.shape == (30, 50, 3) and out.dtype == np.uint8
    assert np.array_equal(rgb, before)
    assert upsample(np.ones((4, 6)), (30, 50)).shape == (30, 50)


@pytest.mark.parametrize("colormap", ["jet", "turbo", "inferno", "viridis", "magma", "hot"])
def test_overlay_opacity_extremes(colormap):
    rgb = np.random.default_rng(3).integers(0, 256, (21, 33, 3), dtype=np.uint8)
    cam = np.random.default_rng(4).random((3, 5)).astype(np.float32) * 7.0
    assert np.array_equal(overlay(rgb, cam, colormap=colormap, alpha=0.0), rgb)
    level = cv2.resize(cam, (33, 21), interpolation=cv2.INTER_LINEAR)
    level = np.round(level / level.max() * 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(level, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)
    assert np.array_equal(overlay(rgb, cam, colormap=colormap, alpha=1.0), heat)


def test_overlay_normalize_options():
    rgb = np.zeros((16, 16, 3), np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 2.0  # hot top-left
    by_image = overlay(rgb, cam, colormap="jet", alpha=1.0, normalize="image")
    assert np.array_equal(by_image, overlay(rgb, cam, colormap="jet", alpha=1.0, normalize=("fixed", 2.0)))
    # jet runs from dark blue (0) to dark red (1): the hot corner is red, the cold one blue
    assert by_image[0, 0, 0] >= 128 and by_image[0, 0, 2] == 0
    assert by_image[-1, -1, 2] >= 128 and by_image[-1, -1, 0] == 0
    # A shared scale twice the peak makes the same map cooler; "none" takes values as they are.
    assert not np.array_equal(by_image, overlay(rgb, cam, colormap="jet", alpha=1.0, normalize=("fixed", 4.0)))
    assert np.array_equal(by_image, overlay(rgb, cam / 2.0, colormap="jet", alpha=1.0, normalize="none"))
    assert np.array_equal(overlay(rgb, cam * 10, colormap="jet", alpha=1.0, normalize="none")[0, 0], by_image[0, 0])  # clipped


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rgb": np.zeros((8, 8, 3), np.float32)}, "uint8"),
        ({"rgb": np.zeros((8, 8), np.uint8)}, r"\(H, W, 3\)"),
        ({"cam": np.zeros((2, 4, 4))}, "2-D"),
        ({"colormap": "rainbow-ish"}, "colormap"),
        ({"alpha": 1.5}, "alpha"),
        ({"normalize": "percentile"}, "normalize"),
        ({"normalize": ("fixed", 0.0)}, "vmax"),
    ],
)
def test_overlay_validation(kwargs, match):
    args = {"rgb": np.zeros((8, 8, 3), np.uint8), "cam": np.ones((4, 4), np.float32), **kwargs}
    rgb, cam = args.pop("rgb"), args.pop("cam")
    with pytest.raises(ValueError, match=match):
        overlay(rgb, cam, **args)
