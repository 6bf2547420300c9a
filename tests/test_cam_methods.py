"""CAM methods: agreement with pytorch-grad-cam, one forward for all, contrast maps, bad input."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from core.cam_methods import (
    METHODS, SCORECAM_COST, eigencam_map, gradcampp_weights, masked_logits, scorecam_forwards, xgradcam_weights,
)
from core.camlayer import forward_with_tap
from core.cammaps import GRADIENT_METHODS, METHOD_NAMES, TARGET_CONTRAST, TARGET_PRED, TARGET_TRUE, TARGETS
from core.gradcam import explain, explain_many, predict_and_explain, predict_and_explain_many
from core.model import SportsVGG
from tests.test_gradcam import NUM_CLASSES, quadrant_images

LIBRARY_CLASS = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "hirescam": "HiResCAM", "eigencam": "EigenCAM", "scorecam": "ScoreCAM",
}
SIGNED = ("eigencam",)  # the library keeps LAPACK's sign of the component; compared separately


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained():
    """SportsVGG(4), its head trained for 40 steps on quadrant images at 64 px (base frozen)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(11)
    model = SportsVGG(NUM_CLASSES)
    x, y = quadrant_images(48, g)
    with torch.no_grad():
        feats = model.features(x)
    opt = torch.optim.Adam(model.head_parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        idx = torch.randint(0, len(y), (24,), generator=g)
        loss = nn.functional.cross_entropy(model.head(feats[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def batch():
    x, y = quadrant_images(8, torch.Generator().manual_seed(12))
    true = torch.where(torch.arange(len(y)) % 2 == 0, y, (y + 1) % NUM_CLASSES)  # half mislabelled
    return x, true


def tiny_cnn(classes: int = 5, seed: int = 0) -> nn.Sequential:
    """A small CNN (ReLUs not in place, so the library's saved activation is the layer's own output)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    ).eval()


def library_maps(method, model, layer, x, target_sets) -> np.ndarray:
    """pytorch-grad-cam's maps (N, K, h, w) for each target set, as ``get_cam_image`` returns them: before
    ``BaseCAM.compute_cam_per_layer`` applies its ReLU and ``scale_cam_image`` (resize, min-max per image)."""
    import pytorch_grad_cam

    class Raw(getattr(pytorch_grad_cam, LIBRARY_CLASS[method])):
        def get_cam_image(self, *args, **kwargs):
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    out = []
    with Raw(model=model, target_layers=[layer]) as cam:
        cam.batch_size = 64  # Score-CAM's masked images per forward
        for targets in target_sets:
            cam(input_tensor=x, targets=targets)
            out.append(cam.raw)
    model.zero_grad(set_to_none=True)  # the library's backward fills .grad
    return np.stack(out, axis=1)


def library_maps_shared(methods, model, layers, x, target_sets) -> dict[tuple[str, nn.Module], np.ndarray]:
    """``library_maps`` for several gradient methods and layers from one library pass per target set.

    The library's gradient methods differ only in ``get_cam_image``; its forward, backward and capture
    (``BaseCAM.forward``) are the same. One GradCAM pass per target set captures every layer's activation
    and gradient, and each method's own ``get_cam_image`` is applied to them: {(method, layer): (N, K, h, w)}.
    """
    import pytorch_grad_cam

    bare = {m: object.__new__(getattr(pytorch_grad_cam, LIBRARY_CLASS[m])) for m in methods}  # no hooks
    for inst in bare.values():
        inst.activations_and_grads = SimpleNamespace(release=lambda: None)  # what BaseCAM.__del__ releases
    out: dict = {(m, layer): [] for m in methods for layer in layers}

    class Driver(pytorch_grad_cam.GradCAM):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
            for m in methods:
                cam = bare[m].get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
                out[m, target_layer].append(cam)
            return super().get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)

    with Driver(model=model, target_layers=list(layers)) as cam:
        for targets in target_sets:
            cam(input_tensor=x, targets=targets)
    model.zero_grad(set_to_none=True)
    return {key: np.stack(maps, axis=1) for key, maps in out.items()}


def class_target(c: int):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return ClassifierOutputTarget(c)


def contrast_target(p: int, t: int):
    return lambda out: out[p] - out[t]


def assert_same_maps(ours: np.ndarray, theirs: np.ndarray, min_live: float = 0.6) -> None:
    """Pearson >= 0.999 and the same peak cell for every map that is not all zero; all-zero maps agree."""
    assert ours.shape == theirs.shape
    cells = ours.shape[-2] * ours.shape[-1]
    ours, theirs = ours.reshape(-1, cells), theirs.reshape(-1, cells)
    scale = max(float(np.abs(theirs).max()), 1e-12)
    live = 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if b.std() == 0 or a.std() == 0:
            np.testing.assert_allclose(a, b, atol=1e-5 * scale, err_msg=f"map {i}")
            continue
        live += 1
        assert np.corrcoef(a, b)[0, 1] >= 0.999, f"map {i}"
        assert a.argmax() == b.argmax(), f"map {i}: peak cell {a.argmax()} vs {b.argmax()}"
    assert live >= min_live * len(ours), f"only {live} of {len(ours)} maps are not constant"


def three_target_sets(logits: torch.Tensor, true: torch.Tensor):
    pred = logits.argmax(1)
    return [
        [class_target(int(p)) for p in pred],
        [class_target(int(t)) for t in true],
        [contrast_target(int(p), int(t)) for p, t in zip(pred, true)],
    ]


# --------------------------------------------------------------------------------------------------
# Agreement with pytorch-grad-cam
# --------------------------------------------------------------------------------------------------
def test_table_holds_the_shared_names():
    assert tuple(METHODS) == METHOD_NAMES
    assert all(METHODS[name].name == name for name in METHOD_NAMES)
    assert [m for m in METHOD_NAMES if not METHODS[m].class_specific] == ["eigencam"]


def test_gradient_methods_match_library_on_sportsvgg(trained, batch):
    """At features.35 (4x4 at 64 px) and features.26 (8x8): pred, true and the contrast."""
    x, true = batch
    layers = {"features.26": 8, "features.35": 4}  # in forward order, as the library pairs them with its captures
    ours = {name: predict_and_explain_many(trained, x, true, GRADIENT_METHODS, layer=name) for name in layers}
    out = ours["features.35"]
    wrong = (out.pred != true).numpy()
    assert wrong.sum() >= 3 and (~wrong).sum() >= 2
    theirs = library_maps_shared(GRADIENT_METHODS, trained, [trained.get_submodule(n) for n in layers], x,
                                 three_target_sets(out.logits, true))
    for (method, layer), lib in theirs.items():
        name = next(n for n in layers if trained.get_submodule(n) is layer)
        got = ours[name].maps[method].numpy()
        assert got.shape == (8, 3, layers[name], layers[name])
        lib = np.maximum(lib, 0)
        assert_same_maps(got[:, :2], lib[:, :2])
        assert_same_maps(got[wrong, 2], lib[wrong, 2], min_live=0.5)  # the contrast, where it exists
        assert not got[~wrong, 2].any()


@pytest.mark.parametrize("layer_index", [3, 6])
def test_every_method_matches_library_on_small_cnn(layer_index):
    model = tiny_cnn()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    true = torch.tensor([0, 1, 2, 3, 4, 0])
    methods = tuple(m for m in METHOD_NAMES if m not in SIGNED)
    out = predict_and_explain_many(model, x, true, methods, layer=str(layer_index))
    wrong = (out.pred != true).numpy()
    assert wrong.sum() >= 2
    target_sets = three_target_sets(out.logits, true)
    for method in methods:
        theirs = np.maximum(library_maps(method, model, model[layer_index], x, target_sets), 0)
        ours = out.maps[method].numpy()
        assert_same_maps(ours[:, :2], theirs[:, :2])
        assert_same_maps(ours[wrong, 2], theirs[wrong, 2], min_live=0.5)


@pytest.mark.parametrize("which", ["sportsvgg", "small cnn"])
def test_eigencam_matches_library_up_to_its_sign(trained, batch, which):
    """The library's projection equals ours or its mirror image; ours is the one that correlates
    positively with the layer's total activation, and where the signs agree the maps are equal."""
    if which == "sportsvgg":
        model, layer, x = trained, "features.35", batch[0]
    else:
        model, layer, x = tiny_cnn(), "6", torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = explain_many(model, x, [0] * len(x), ["eigencam"], layer=layer)[1]["eigencam"]
    with torch.no_grad():
        acts = forward_with_tap(model, layer, x)[1].detach()
    signed = eigencam_map(acts).numpy().reshape(len(x), -1)
    theirs = library_maps("eigencam", model, model.get_submodule(layer), x, [None])[:, 0].reshape(len(x), -1)
    total = acts.sum(1).numpy().reshape(len(x), -1)
    for s, t, a, m in zip(signed, theirs, total, maps[:, 0].numpy().reshape(len(x), -1)):
        r = np.corrcoef(s, t)[0, 1]
        assert abs(r) >= 0.999
        assert np.corrcoef(s, a)[0, 1] >= 0
        np.testing.assert_allclose(m, np.maximum(s, 0))
        if r > 0:
            assert_same_maps(m[None, None].reshape(1, 1, -1), np.maximum(t, 0).reshape(1, 1, -1), min_live=1)


# --------------------------------------------------------------------------------------------------
# One forward, shared backwards, the contrast
# --------------------------------------------------------------------------------------------------
def test_one_forward_and_one_backward_per_target(trained, batch, monkeypatch):
    x, true = batch
    forwards = []
    handle = trained.features[0].register_forward_hook(lambda *a: forwards.append(1))
    backwards = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(1) or grad(*a, **k))
    try:
        predict_and_explain_many(trained, x, true, GRADIENT_METHODS + ("eigencam",))
        assert (len(forwards), len(backwards)) == (1, 3)  # pred, true, contrast
        forwards.clear(), backwards.clear()
        out = predict_and_explain(trained, x, true)
        right = out.pred  # every label right: true == pred, the contrast is zero everywhere
        forwards.clear(), backwards.clear()
        predict_and_explain_many(trained, x, right, GRADIENT_METHODS)
        assert (len(forwards), len(backwards)) == (1, 1)
        forwards.clear(), backwards.clear()
        explain_many(trained, x, [0] * 8, ["eigencam"])
        assert (len(forwards), len(backwards)) == (1, 0)
    finally:
        handle.remove()


def test_explain_many_equals_explain_per_method(trained, batch):
    x, true = batch[0][:4], batch[1][:4]
    targets = torch.stack([true, (true + 2) % NUM_CLASSES], 1)
    logits, many = explain_many(trained, x, targets, METHOD_NAMES[:6])
    for method in METHOD_NAMES[:6]:
        logits1, maps = explain(trained, x, targets, method=method)
        torch.testing.assert_close(logits1, logits)
        torch.testing.assert_close(maps, many[method])
        assert maps.dtype == torch.float32 and (maps >= 0).all()
    torch.testing.assert_close(many["eigencam"][:, 0], many["eigencam"][:, 1])  # no class in it
    _, maps = explain(trained, x, targets)
    torch.testing.assert_close(maps, many["gradcam"])  # Grad-CAM stays the default


def test_predict_and_explain_many_per_image(trained, batch):
    x, true = batch
    out = predict_and_explain_many(trained, x, true, ["gradcam", "layercam", "eigencam"], topk=3)
    old = predict_and_explain(trained, x, true, topk=3)
    torch.testing.assert_close(out.maps["gradcam"][:, :2], old.maps)
    assert torch.equal(out.top_classes, old.top_classes) and torch.equal(out.pred, old.pred)
    for i in range(len(x)):
        maps = out.image_maps(i)
        assert set(maps) == {"gradcam", "layercam", "eigencam"}
        wrong = int(out.pred[i]) != int(true[i])
        assert tuple(maps["gradcam"]) == (TARGETS if wrong else (TARGET_PRED,))
        assert tuple(maps["eigencam"]) == (TARGET_PRED,)
        assert out.class_of(i, TARGET_TRUE) == int(true[i])
        assert out.class_of(i, TARGET_CONTRAST) == out.class_of(i, TARGET_PRED) == int(out.pred[i])
        np.testing.assert_array_equal(maps["layercam"][TARGET_PRED], out.maps["layercam"][i, 0].numpy())
        assert all(m.dtype == np.float32 and m.shape == (4, 4) for per in maps.values() for m in per.values())


def test_contrast_is_the_gradient_of_the_difference(trained, batch):
    """By linearity, HiResCAM's pre-ReLU map of pred - true is the difference of the two maps."""
    x, true = batch
    with torch.enable_grad():
        logits, acts = forward_with_tap(trained, "features.35", x)
        pred = logits.argmax(1)
        g = [torch.autograd.grad(logits[torch.arange(8), c].sum(), acts, retain_graph=True)[0] for c in (pred, true)]
    expected = ((g[0] - g[1]) * acts.detach()).sum(1).clamp_min(0)
    out = predict_and_explain_many(trained, x, true, ["hirescam"])
    wrong = pred != true
    torch.testing.assert_close(out.maps["hirescam"][wrong, 2], expected[wrong], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Score-CAM
# --------------------------------------------------------------------------------------------------
def test_scorecam_batches_and_cost():
    model = tiny_cnn()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        acts = forward_with_tap(model, "6", x)[1].detach()
        one = masked_logits(model, x, acts, batch_size=1)
        seven = masked_logits(model, x, acts, batch_size=7)
    assert one.shape == (3, 16, 5)
    torch.testing.assert_close(one, seven)
    assert scorecam_forwards(512, 3) == 1536 and "per channel" in SCORECAM_COST
    calls = []
    handle = model[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        explain_many(model, x, [[0, 1]] * 3, ["scorecam"], layer="6", scorecam_batch=5)
    finally:
        handle.remove()
    assert calls[0] == 3 and sum(calls[1:]) == scorecam_forwards(16, 3) and max(calls[1:]) <= 5


def test_scorecam_refuses_a_wide_layer(trained, batch):
    with pytest.raises(ValueError, match="512 channels, more than the limit of 256"):
        explain_many(trained, batch[0][:1], [0], ["gradcam", "scorecam"], scorecam_max_channels=256)
    wide = nn.Sequential(nn.Conv2d(3, 1100, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1100, 2))
    with pytest.raises(ValueError, match="1100 channels, more than the limit of 1024"):
        explain_many(wide, torch.randn(1, 3, 4, 4), [0], ["scorecam"], layer="1")
    _, maps = explain_many(wide, torch.randn(1, 3, 4, 4), [0], ["scorecam"], layer="1", scorecam_max_channels=1100)
    assert maps["scorecam"].shape == (1, 1, 4, 4)


# --------------------------------------------------------------------------------------------------
# Bad and degenerate input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("methods, bad", [(["gradcam", "gradcam+"], "gradcam+"), ("GradCAM", "GradCAM"), ([], None)])
def test_unknown_or_no_method(trained, methods, bad):
    known = ", ".join(METHOD_NAMES).replace("+", r"\+")
    match = f"unknown CAM method {re.escape(repr(bad))}; expected one of {known}$" if bad else "at least one"
    with pytest.raises(ValueError, match=match):
        explain_many(trained, torch.randn(1, 3, 64, 64), [0], methods)


def test_explain_rejects_unknown_method(trained):
    with pytest.raises(ValueError, match="unknown CAM method 'grad-cam'"):
        explain(trained, torch.randn(1, 3, 64, 64), [0], method="grad-cam")


def test_method_names_given_once_or_as_a_string(trained, batch):
    x = batch[0][:2]
    _, maps = explain_many(trained, x, [0, 1], ["layercam", "gradcam", "layercam"])
    assert list(maps) == ["layercam", "gradcam"]
    _, single = explain_many(trained, x, [0, 1], "layercam")
    torch.testing.assert_close(single["layercam"], maps["layercam"])


def test_constant_input_gives_zero_maps_not_nan():
    """A black image through zero biases: every activation and gradient at the layer is zero."""
    model = tiny_cnn()
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(m.bias)
    out = predict_and_explain_many(model, torch.zeros(2, 3, 16, 16), [1, 2], METHOD_NAMES, layer="6")
    for method, maps in out.maps.items():
        assert torch.isfinite(maps).all() and not maps.any(), method
    vgg = SportsVGG(3).eval()
    _, maps = explain_many(vgg, torch.zeros(1, 3, 32, 32), [[0, 2]], METHOD_NAMES[:6])
    for method, m in maps.items():
        assert torch.isfinite(m).all() and not m.any(), method


def test_divisions_are_guarded():
    """Grad-CAM++'s denominator can reach zero on a layer with negative activations, XGrad-CAM's on a
    channel that sums to zero: weights stay finite and such cells/channels count for nothing."""
    acts = torch.tensor([[[[1.0, -1.0], [0.5, -0.5]], [[0.0, 0.0], [0.0, 0.0]]]])  # channel sums 0, 0
    grads = torch.tensor([[[[2.0, -1.0], [0.5, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    torch.testing.assert_close(xgradcam_weights(acts, grads), torch.zeros(1, 2))
    acts = torch.full((1, 1, 2, 2), -0.5)  # sums to -2: den = 2 g^2 - 2 g^3 + eps
    grads = torch.tensor([[[[0.5, 2.0], [-1.0, 0.0]]]])
    # g = 0.5: den = 0.25, alpha = 1, weight 0.5; g = 2: den = -8 < 0, alpha = 0; g <= 0: no weight (ReLU)
    torch.testing.assert_close(gradcampp_weights(acts, grads), torch.tensor([[0.5]]), rtol=1e-4, atol=0)
