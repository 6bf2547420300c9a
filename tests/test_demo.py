"""The demo end to end on a smaller synthetic set: a trained model whose Grad-CAM maps point at the objects.

One session-scoped training (about 3 minutes on two cores) serves the localisation test, the comparison
with pytorch-grad-cam on a trained model, and the store checks.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from core.cammaps import DEFAULT_METHOD, pointing_game
from core.data import ImageDataset, collate, discover
from core.gradcam import explain
from core.model import load_checkpoint
from core.synth import generate_demo_dataset
from db import store
from db.models import CamMap, ImageRow, Prediction, Run
from jobs import train as train_job

pytestmark = pytest.mark.slow

DEMO_FLAGS = ["--weights", "none", "--image-size", "48", "--batch-size", "16", "--epochs-frozen", "1",
              "--epochs-finetune", "8", "--lr-finetune", "3e-4", "--dropout", "0.2", "--cam-layer", "features.26",
              "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    root = generate_demo_dataset(tmp / "data", n_train=80, n_valid=10, n_test=20)
    db = f"sqlite:///{tmp / 'store.db'}"
    args = train_job.get_args_parser().parse_args(
        ["--data", str(root), "--db", db, "--out", str(tmp / "ck"), "--run-name", "demo-test", *DEMO_FLAGS])
    assert train_job.main(args) == 0
    S = store.make_sessionmaker(store.make_engine(db, readonly=True))
    with S() as s:
        run = store.resolve_run(s, "demo-test")
        return {"db": db, "run_id": run.id, "root": root, "checkpoint": Path(run.checkpoint_path),
                "image_size": run.image_size}


def test_demo_run_is_complete_with_both_maps(demo_run):
    S = store.make_sessionmaker(store.make_engine(demo_run["db"], readonly=True))
    with S() as s:
        run = s.get(Run, demo_run["run_id"])
        assert run.status == "complete" and run.cam_layer == "features.26"
        assert run.metrics["test"]["top1"] >= 0.6, run.metrics  # it learned (the full demo reaches > 0.9)
        n_eval = s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.split.in_(["valid", "test"]),
                                                                            ImageRow.run_id == run.id))
        assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.run_id == run.id)) \
            == n_eval == 300
        rows = s.execute(select(Prediction.image_id, Prediction.pred, ImageRow.label, CamMap.target,
                                CamMap.class_index, CamMap.h, CamMap.w, CamMap.data)
                         .join(ImageRow, ImageRow.id == Prediction.image_id)
                         .join(CamMap, CamMap.image_id == Prediction.image_id)
                         .where(CamMap.method == DEFAULT_METHOD, Prediction.run_id == run.id)).all()
        targets: dict[int, dict[str, int]] = {}
        for image_id, pred, label, target, cls, h, w, data in rows:
            targets.setdefault(image_id, {})[target] = cls
            assert (h, w) == (6, 6) and len(data) == 2 * 36
        assert len(targets) == n_eval
        for (image_id, pred, label, *_rest) in rows:
            assert targets[image_id] == ({"pred": pred} if pred == label
                                         else {"pred": pred, "true": label, "contrast": pred})
        assert all(b is not None for b in s.scalars(select(ImageRow.bbox)))
    out = subprocess.run([sys.executable, "-m", "jobs.runs", "--db", demo_run["db"], "--json"],
                         capture_output=True, text=True, check=True).stdout
    (summary,) = json.loads(out)
    assert summary["splits"]["test"]["maps"] == 200 and summary["splits"]["valid"]["maps"] == 100


def test_maps_point_at_the_objects(demo_run):
    """Pointing game: the predicted-class map's peak lies in the object's box for >= 80 % of the correctly
    classified test images, far above the rate of a random point."""
    from bench.pointing import localisation_rows

    S = store.make_sessionmaker(store.make_engine(demo_run["db"], readonly=True))
    with S() as s:
        rows = localisation_rows(s, demo_run["run_id"], "test")
    assert len(rows) >= 100
    cams = [r.cam for r in rows]
    res = pointing_game(cams, [tuple(r.bbox) for r in rows], demo_run["image_size"],
                        [(r.width, r.height) for r in rows])
    print(res)
    assert res["hit_rate"] >= 0.8
    assert res["random_rate"] < 0.45 and res["hit_rate"] >= res["random_rate"] + 0.3


@pytest.mark.parametrize("layer", ["features.35", "features.26"])
def test_equal_to_pytorch_grad_cam_on_the_trained_demo(demo_run, layer):
    """Our raw maps against pytorch-grad-cam's map before its per-image scaling, for pred and true class."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tests.test_gradcam import RawGradCAM

    model, meta = load_checkpoint(demo_run["checkpoint"])
    idx = discover(demo_run["root"])
    ds = ImageDataset(idx.root, idx.splits["test"][::5][:40], meta.image_size, train=False)
    x, y, _, bad, _ = collate([ds[i] for i in range(len(ds))])
    assert not bad and len(x) >= 32
    with torch.inference_mode():
        pred = model(x).argmax(1)
    targets = torch.stack([pred, y], 1)
    _, ours = explain(model, x, targets, layer=layer)

    with RawGradCAM(model, model.get_submodule(layer)) as ref:
        for k in range(2):
            ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets[:, k]])
            for i in range(len(x)):
                a, b = ours[i, k].numpy().ravel(), ref.raw[i].ravel()
                if b.max() <= 0:
                    assert a.max() <= 1e-6
                    continue
                assert np.corrcoef(a, b)[0, 1] >= 0.999
                assert a.argmax() == b.argmax()
