"""The model: output shapes, what each phase trains, and checkpoints that load with weights_only=True."""
from __future__ import annotations

import argparse

import pytest
import torch

from core.data import ImageDataset, collate, discover
from core.dist import DistEnv
from core.engine import Skipped, train_one_epoch
from core.model import (
    CheckpointError,
    ModelMeta,
    SportsVGG,
    WeightsUnavailable,
    eval_mode,
    load_checkpoint,
    load_imagenet_base,
    save_checkpoint,
)
from jobs.training import make_optimizer


@pytest.mark.parametrize("size,fmap", [(224, 14), (64, 4), (32, 2)])
def test_output_shapes(size, fmap):
    torch.manual_seed(0)
    m = SportsVGG(7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        assert m(x).shape == (2, 7)
        assert m.features[:36](x).shape == (2, 512, fmap, fmap)


def _args(**kw):
    base = dict(lr_frozen=1e-3, lr_finetune=1e-3, weight_decay=0.0, epochs_frozen=1, epochs_finetune=1)
    base.update(kw)
    return argparse.Namespace(**base)


def _train_once(model, phase, dataset):
    idx = discover(dataset)
    ds = ImageDataset(dataset, idx.splits["train"], 32, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    opt, _ = make_optimizer(model, phase, _args())
    return train_one_epoch(model, loader, opt, torch.device("cpu"), frozen_base=phase == 1, scaler=None,
                           env=DistEnv(), skipped=Skipped())


def test_phase1_freezes_the_base_and_phase2_trains_it(dataset):
    torch.manual_seed(0)
    model = SportsVGG(3)
    base0 = {k: v.clone() for k, v in model.features.state_dict().items()}
    head0 = {k: v.clone() for k, v in model.reduce.state_dict().items()}
    _train_once(model, 1, dataset)
    assert all(torch.equal(base0[k], v) for k, v in model.features.state_dict().items())
    assert all(p.grad is None for p in model.features.parameters())
    assert any(not torch.equal(head0[k], v) for k, v in model.reduce.state_dict().items())
    _train_once(model, 2, dataset)
    changed = [k for k, v in model.features.state_dict().items() if not torch.equal(base0[k], v)]
    assert len(changed) == len(base0), "phase 2 must update every base tensor"


def test_frozen_forward_builds_no_graph_through_the_base():
    m = SportsVGG(3)
    seen = []
    m.features.register_forward_hook(lambda mod, inp, out: seen.append(out.requires_grad))
    m(torch.randn(1, 3, 32, 32), frozen_base=True)
    assert seen == [False]


def test_checkpoint_round_trip_weights_only(tmp_path):
    torch.manual_seed(1)
    m = SportsVGG(4)
    meta = ModelMeta(class_names=["a b", "c", "d", "é"], image_size=48)
    path = tmp_path / "ck" / "best.pt"
    save_checkpoint(path, {"model": m.state_dict(), "meta": meta.to_dict(), "epochs_done": 3})
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["epochs_done"] == 3
    loaded, meta2 = load_checkpoint(path)
    assert not loaded.training
    assert meta2.class_names == meta.class_names and meta2.image_size == 48 and meta2.cam_layer == "features.35"
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not list(path.parent.glob(".*tmp*")), "no temporary file is left behind"


def test_damaged_checkpoint_gives_a_clear_error(tmp_path):
    p = tmp_path / "last.pt"
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_imagenet_weights_unavailable_names_the_alternatives(monkeypatch):
    from torchvision.models import VGG19_Weights
    from torchvision.models._api import WeightsEnum

    def offline(self, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailable) as exc:
        load_imagenet_base(SportsVGG(2), "imagenet")
    assert "--weights none" in str(exc.value) and "--weights PATH" in str(exc.value)
    assert VGG19_Weights.IMAGENET1K_V1.url  # the real weights API is the one being called


def test_weights_from_a_file(tmp_path):
    src = SportsVGG(2)
    torch.save({f"features.{k}": v for k, v in src.features.state_dict().items()}, tmp_path / "vgg.pt")
    dst = SportsVGG(2)
    load_imagenet_base(dst, str(tmp_path / "vgg.pt"))
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    with pytest.raises(WeightsUnavailable, match="no such file"):
        load_imagenet_base(dst, str(tmp_path / "missing.pt"))


def test_eval_mode_restores_each_module_mode_even_on_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    model.train()
    model[1].eval()  # a mixed state: the block must give back exactly this
    before = [m.training for m in model.modules()]
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
