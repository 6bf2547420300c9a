"""Faithfulness curves, sanity checks, the trust job and its dashboard page.

Most tests use a small CNN trained in a few seconds on coloured squares at random places (the class is
the colour, so the evidence sits where the square is); VGG-19 runs only in the end-to-end job test.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest
from torch import nn

from core import trust
from core.gradcam import explain
from core.model import SportsVGG
from db import queries
from db.models import SanityCheck, TrustScore
from db.store import make_engine, make_sessionmaker
from jobs import train as train_job
from jobs import trust as trust_job
from tests.conftest import make_dataset
from tests.storefactory import build_store
from tests.test_train import TINY

SIZE = 48
COLOURS = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 2.0, 0]])
CAM_LAYER = "7"  # ReLU after the third convolution: 12 x 12 at 48 px
HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def squares(n: int, generator: torch.Generator, size: int = SIZE):
    """Noise with one square of side size/4 at a random place; the class is the square's colour."""
    x = torch.randn(n, 3, size, size, generator=generator) * 0.3
    y = torch.randint(0, len(COLOURS), (n,), generator=generator)
    side = size // 4
    for i, c in enumerate(y.tolist()):
        top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
        x[i, :, top : top + side, left : left + side] += COLOURS[c].view(3, 1, 1)
    return x, y


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(COLOURS)),
    )


STAGES = [trust.Stage("linear", ("10",)), trust.Stage("conv3", ("6",)), trust.Stage("conv2", ("3",)),
          trust.Stage("conv1", ("0",))]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = small_cnn()
    x, y = squares(256, g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        idx = torch.randint(0, len(y), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch(trained):
    x, y = squares(24, torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = trained(x).argmax(1)
    return x, y, pred


@pytest.fixture(scope="module")
def scored(trained, batch):
    x, y, pred = batch
    _, maps = explain(trained, x, pred, layer=CAM_LAYER)
    return trust.faithfulness(trained, x, maps[:, 0], pred, seeds=list(range(len(x))), steps=8)


# --------------------------------------------------------------------------------------------------
# Area, ranks, blur, similarity
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "curve, fractions, expected",
    [
        ([0.7, 0.7, 0.7], None, 0.7),
        ([1.0, 0.0], None, 0.5),
        ([1.0, 0.5, 0.0, 0.0, 0.0], None, 0.25),
        ([0.0, 1.0, 1.0], [0.0, 0.25, 1.0], 0.875),
    ],
)
def test_auc(curve, fractions, expected):
    assert trust.auc(np.array(curve), fractions) == pytest.approx(expected)


def test_auc_batched_and_validated():
    curves = np.stack([np.linspace(1, 0, 17), np.ones(17)])[None]  # (1, 2, 17)
    np.testing.assert_allclose(trust.auc(curves), [[0.5, 1.0]])
    with pytest.raises(ValueError, match="at least 2 points"):
        trust.auc(np.array([0.5]))
    with pytest.raises(ValueError, match="non-decreasing"):
        trust.auc(np.array([1.0, 0.5, 0.0]), [0.0, 0.8, 0.5])


def test_pixel_ranks_order_and_ties():
    sal = torch.tensor([[0.1, 0.9, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]])
    tie = torch.tensor([[0.0, 0.0, 0.2, 0.8], [0.3, 0.1, 0.4, 0.2]])
    ranks = trust.pixel_ranks(sal, tie)
    assert ranks.tolist() == [[3, 0, 2, 1], [1, 3, 0, 2]]
    # Values within the tie resolution of the peak are equal: order falls back to the tie-break.
    near = torch.tensor([[1.0, 1.0 - 1e-9, 1.0 + 1e-9, 0.0]])
    assert trust.pixel_ranks(near, torch.tensor([[0.1, 0.2, 0.3, 0.0]])).tolist() == [[2, 1, 0, 3]]


def test_blur_keeps_constants_and_shape():
    x = torch.full((2, 3, 20, 24), 0.7)
    out = trust.blur(x, 3.0)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert trust.blur(noise).std() < 0.5 * noise.std()


def test_similarity_measures():
    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 32))
    np.testing.assert_allclose(trust.ssim(a, a), 1.0)
    np.testing.assert_allclose(trust.spearman(a, a), 1.0)
    np.testing.assert_allclose(trust.spearman(a, -a), -1.0)
    np.testing.assert_allclose(trust.ssim(a, 5 * a), 1.0)  # maps are scaled by their peak first
    other = rng.random((3, 32, 32))
    assert (np.abs(trust.spearman(a, other)) < 0.1).all() and (trust.ssim(a, other) < 0.2).all()
    zeros = np.zeros((1, 32, 32))
    assert trust.spearman(zeros, zeros)[0] == 1.0 and trust.ssim(zeros, zeros)[0] == pytest.approx(1.0)
    assert trust.spearman(zeros, a[:1])[0] == 0.0
    with pytest.raises(ValueError, match="one shape"):
        trust.ssim(a, a[:, :16])


# --------------------------------------------------------------------------------------------------
# Faithfulness on a trained model
# --------------------------------------------------------------------------------------------------
def test_gradcam_beats_random_on_deletion(batch, scored):
    x, y, pred = batch
    correct = (pred == y).numpy()
    assert correct.mean() >= 0.9, "the test model did not learn the colours"
    grad = scored["gradcam"].deletion_auc[correct, 0]
    rand = scored["random"].deletion_auc[correct, 0]
    assert (grad < rand).mean() >= 0.8
    assert grad.mean() < rand.mean() - 0.2


def test_curves_endpoints_and_range(trained, batch, scored):
    x, _, pred = batch
    with torch.no_grad():
        p = trained(x).softmax(1)[torch.arange(len(x)), pred].numpy()
        p_fill = trained(torch.zeros_like(x)).softmax(1)[torch.arange(len(x)), pred].numpy()
        p_blur = trained(trust.blur(x)).softmax(1)[torch.arange(len(x)), pred].numpy()
    for c in scored.values():
        assert c.deletion.shape == c.insertion.shape == (len(x), 1, 9)
        np.testing.assert_allclose(c.deletion[:, 0, 0], p, rtol=1e-5)
        np.testing.assert_allclose(c.deletion[:, 0, -1], p_fill, rtol=1e-5)
        np.testing.assert_allclose(c.insertion[:, 0, 0], p_blur, rtol=1e-5)
        np.testing.assert_allclose(c.insertion[:, 0, -1], p, rtol=1e-5)
        assert ((c.deletion >= 0) & (c.deletion <= 1)).all()
        np.testing.assert_allclose(c.fractions, np.linspace(0, 1, 9))


def test_chunking_does_not_change_curves_and_inputs_untouched(trained, batch):
    x, _, pred = batch
    x, pred = x[:5], pred[:5]
    before = x.clone()
    maps = torch.rand(5, 2, 12, 12, generator=torch.Generator().manual_seed(3))
    tie = trust.random_maps(range(5), (12, 12))
    a = trust.perturbation_curves(trained, x, maps, pred, tiebreak=tie, steps=6, chunk=7, fill="blur")
    b = trust.perturbation_curves(trained, x, maps, pred, tiebreak=tie, steps=6, chunk=200, fill="blur")
    np.testing.assert_allclose(a.deletion, b.deletion, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.insertion, b.insertion, rtol=1e-5, atol=1e-6)
    assert torch.equal(x, before)


@pytest.mark.parametrize("value", [0.0, 0.3, 7.0])
def test_constant_map_scores_exactly_as_the_random_baseline(trained, batch, value):
    """A constant map has no order: ties fall to the random map of the same seed, so its curves are the
    random baseline's, point for point (hence equal in expectation over seeds as well)."""
    x, _, pred = batch
    x, pred = x[:6], pred[:6]
    seeds = [11, 12, 13, 14, 15, 16]
    rand = trust.random_maps(seeds, (12, 12))
    maps = torch.stack([torch.full((6, 12, 12), value), rand], dim=1)
    c = trust.perturbation_curves(trained, x, maps, pred, tiebreak=rand, steps=6)
    np.testing.assert_array_equal(c.deletion[:, 0], c.deletion[:, 1])
    np.testing.assert_array_equal(c.insertion[:, 0], c.insertion[:, 1])
    # ... and faithfulness() uses the random baseline of the given seeds as the tie-break.
    got = trust.faithfulness(trained, x, torch.full((6, 12, 12), value), pred, seeds, steps=6)
    np.testing.assert_array_equal(got["gradcam"].deletion, got["random"].deletion)


def test_validation(trained, batch):
    x, _, pred = batch
    maps = torch.rand(len(x), 12, 12)
    with pytest.raises(ValueError, match="fill"):
        trust.faithfulness(trained, x, maps, pred, list(range(len(x))), fill="black")
    with pytest.raises(ValueError, match="one seed per image"):
        trust.faithfulness(trained, x, maps, pred, [1, 2])
    with pytest.raises(ValueError, match="one class per image"):
        trust.faithfulness(trained, x, maps, pred[:3], list(range(len(x))))


# --------------------------------------------------------------------------------------------------
# Sanity checks
# --------------------------------------------------------------------------------------------------
def test_cascade_decorrelates_and_leaves_model_alone(trained, batch):
    x, _, pred = batch
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    result = trust.cascade_randomisation(trained, x, pred, STAGES, layer=CAM_LAYER, seed=0)
    rows = {r["stage"]: r for r in result.summary()}
    assert list(rows) == ["repeat", "noise", "linear", "conv3", "conv2", "conv1"]
    assert rows["repeat"]["spearman_mean"] == 1.0 and rows["repeat"]["ssim_mean"] == pytest.approx(1.0)
    assert rows["noise"]["spearman_mean"] > 0.9
    for r in list(rows.values())[2:]:
        assert r["spearman_mean"] < rows["noise"]["spearman_mean"] - 0.5, r
        assert r["ssim_mean"] < rows["noise"]["ssim_mean"] - 0.5, r
    assert all(torch.equal(v, state[k]) for k, v in trained.state_dict().items())


def test_vgg_stages():
    model = SportsVGG(3)
    stages = trust.vgg_stages(model)
    assert [s.name for s in stages[:4]] == ["classifier", "reduce", "conv5_4", "conv5_3"]
    assert stages[0].modules == ("classifier.2", "classifier.5") and stages[2].modules == ("features.34",)
    assert stages[-1].name == "conv1_1" and stages[-1].modules == ("features.0",) and len(stages) == 18
    assert [s.name for s in trust.vgg_stages(model, "conv5_3")] == ["classifier", "reduce", "conv5_4", "conv5_3"]
    with pytest.raises(ValueError, match="depth"):
        trust.vgg_stages(model, "conv6_1")


# --------------------------------------------------------------------------------------------------
# The job and the page
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    data = make_dataset(tmp / "data", per_split={"train": 2, "valid": 2}, size=32)
    db = f"sqlite:///{tmp / 's.db'}"
    args = train_job.get_args_parser().parse_args(["--data", str(data), "--db", db, "--out", str(tmp / "ck"), *TINY])
    assert train_job.main(args) == 0
    return db


JOB = ["--steps", "4", "--sample", "4", "--sanity-sample", "2", "--sanity-depth", "conv5_4", "--device", "cpu",
       "--methods", "gradcam"]


@pytest.fixture(scope="module")
def scored_run(tiny_run):
    """The tiny run after one ``jobs.trust --json``; returns (db, the printed JSON)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert trust_job.main(trust_job.get_args_parser().parse_args(["--db", tiny_run, "--json", *JOB])) == 0
    return tiny_run, json.loads(buf.getvalue())


def test_job_writes_scores_and_prints_json(scored_run, capsys):
    tiny_run, out = scored_run
    pred = out["scores"]["pred"]
    assert pred["n_images"] == 4 and set(pred["methods"]) == {"gradcam", "random", "centre"}
    assert set(pred["gradcam_beats"]) == {"random", "centre"}
    assert [r["stage"] for r in out["sanity"]] == ["repeat", "noise", "classifier", "reduce", "conv5_4"]
    assert out["sanity"][0]["spearman_mean"] == 1.0
    n_wrong = out["scores"]["true"]["n_images"]
    S = make_sessionmaker(make_engine(tiny_run))
    with S() as s:
        count = s.scalar(select(func.count()).select_from(TrustScore))
        assert count == 3 * (4 + n_wrong)
        frame = queries.trust_frame(s, 1)
        assert len(frame) == count and all(len(c) == 5 for c in frame["deletion_curve"])
        assert s.get(SanityCheck, 1).settings["steps"] == 4
    # Running again replaces the rows of the same images.
    assert trust_job.main(trust_job.get_args_parser().parse_args(["--db", tiny_run, *JOB])) == 0
    assert "Grad-CAM beats random" in capsys.readouterr().out
    with S() as s:
        assert s.scalar(select(func.count()).select_from(TrustScore)) == count


def test_job_rejects_bad_arguments(tiny_run):
    with pytest.raises(ValueError, match="--steps"):
        trust_job.main(trust_job.get_args_parser().parse_args(["--db", tiny_run, "--steps", "1"]))


def page(url: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.run()
    at.switch_page("views/trust.py").run()
    return at


def test_page_with_scores(scored_run, monkeypatch):
    at = page(scored_run[0], monkeypatch)
    assert not at.exception
    assert [t.value for t in at.title] == ["Can the maps be trusted?"]
    assert [m.label for m in at.metric if "deletion AUC" in m.label][:3] == [
        "Grad-CAM: deletion AUC", "random map: deletion AUC", "centred map: deletion AUC"]
    assert len(at.get("plotly_chart")) >= 3
    assert not at.error, [e.value for e in at.error]
    worst = [c.value for c in at.caption if " · gap " in c.value]
    drawn = [im for im in at.get("image") if not im.proto.imgs[0].caption.startswith("Heatmap colours")]
    assert worst and len(drawn) == len(worst)  # each least faithful map drawn over its image (and one colour bar)
    at.radio(key="tr_metric").set_value("insertion_auc").run()
    at.radio(key="tr_target").set_value("true").run()
    assert not at.exception


def test_page_empty_state(tmp_path, monkeypatch):
    url, _, _ = build_store(tmp_path, n_classes=3, n_per_class=1, splits=("valid",))
    at = page(url, monkeypatch)
    assert not at.exception
    assert any("python -m jobs.trust --run" in i.value for i in at.info)


def test_page_on_a_store_without_the_trust_tables(tmp_path, monkeypatch):
    import sqlite3

    url, _, _ = build_store(tmp_path, n_classes=3, n_per_class=1, splits=("valid",))
    with sqlite3.connect(url.removeprefix("sqlite:///")) as con:  # as a store from before these tables
        con.execute("DROP TABLE trust_scores")
        con.execute("DROP TABLE sanity_checks")
    at = page(url, monkeypatch)
    assert not at.exception
    assert any("python -m jobs.trust --run" in i.value for i in at.info)
