"""jobs.calibrate on generated stores and on a tiny trained run: the report, the stored row, the one-line
errors, and jobs.cams giving an older run the logits it lacks."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from sqlalchemy import func, select, update

from core import calibration as cal
from core.metrics import decode_logits
from db import queries, store
from db.builder import build_store
from db.builder_calibration import add_logits
from db.models import CalibrationRow, Prediction
from db.queries.calibration import calibration_for, logits_coverage
from jobs import calibrate as job
from jobs.common import run_cli

SPLIT_KEYS = {"n", "ece", "mce", "nll", "brier", "ece_calibrated", "nll_calibrated", "bins"}
BIN_KEYS = {"lo", "hi", "count", "confidence", "accuracy"}


def sessions(url: str):
    return store.make_sessionmaker(store.make_engine(url, create=False))


def run_job(*argv: str) -> int:
    return run_cli(job.main, job.get_args_parser(), list(argv))


@pytest.fixture(scope="module")
def with_logits(tmp_path_factory):
    url, run_id, _ = build_store(tmp_path_factory.mktemp("cal"), n_classes=10, n_per_class=6, seed=1)
    assert add_logits(url, run_id) == 120
    return url, run_id


def test_builder_logits_agree_with_the_stored_predictions(with_logits):
    url, run_id = with_logits
    with sessions(url)() as s:
        stored = queries.logits_for(s, run_id, 10)
        preds = queries.predictions_frame(s, run_id).set_index("image_id")
    assert len(stored.frame) == 120
    assert (stored.logits.argmax(axis=1) == stored.frame["pred"].to_numpy()).all()
    conf, _ = cal.top1(cal.softmax(stored.logits))
    # float16 logits: the confidence they give is the stored one to about 3 decimals where nothing was lifted
    close = np.isclose(conf, preds.loc[stored.frame["image_id"], "confidence"].to_numpy(), atol=2e-3)
    assert close.mean() > 0.8


def test_json_report_and_the_stored_row(with_logits, capsys):
    url, run_id = with_logits
    assert run_job("--db", url, "--run", str(run_id), "--json", "--bins", "10") == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"run_id", "temperature", "valid", "test"} and out["run_id"] == run_id
    for split in ("valid", "test"):
        assert set(out[split]) == SPLIT_KEYS and out[split]["n"] == 60
        assert len(out[split]["bins"]) == 10 and all(set(b) == BIN_KEYS for b in out[split]["bins"])
        assert sum(b["count"] for b in out[split]["bins"]) == 60
    # the numbers are core.calibration's on the stored logits, with the temperature fitted on valid
    with sessions(url)() as s:
        stored = queries.logits_for(s, run_id, 10)
        row = calibration_for(s, run_id)
    z, y = stored.logits, stored.frame["label"].to_numpy()
    valid = (stored.frame["split"] == "valid").to_numpy()
    t = cal.fit_temperature(z[valid], y[valid]).temperature
    assert out["temperature"] == pytest.approx(t)
    ref = cal.split_metrics(z[~valid], y[~valid], temperature=t, bins=10)
    assert out["test"]["ece"] == pytest.approx(ref["ece"]) and out["test"]["nll_calibrated"] == pytest.approx(
        ref["nll_calibrated"])
    assert out["test"]["nll_calibrated"] != out["test"]["nll"]
    assert row.temperature == pytest.approx(out["temperature"]) and row.bins == 10 and not row.stale
    assert row.report["test"]["ece"] == pytest.approx(out["test"]["ece"])


def test_text_report_and_one_row_per_run(with_logits, capsys):
    url, run_id = with_logits
    assert run_job("--db", url, "--run", str(run_id)) == 0
    assert run_job("--db", url, "--run", "latest") == 0
    text = capsys.readouterr().out
    assert f"run {run_id} (synthetic): temperature " in text and "fitted on 60 valid images (15 bins)" in text
    assert [line.split()[0] for line in text.splitlines() if line.startswith(("valid", "test"))] == ["valid", "test"] * 2
    with sessions(url)() as s:
        assert s.scalar(select(func.count()).select_from(CalibrationRow)) == 1
        assert s.get(CalibrationRow, run_id).bins == 15


def test_a_run_without_logits_gets_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/checkpoints folder of the run here
    url, run_id, _ = build_store(tmp_path, n_classes=4, n_per_class=3, seed=2)
    assert run_job("--db", url, "--run", str(run_id)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "has no stored logits" in line and "checkpoint (none recorded) is gone" in line
    assert "python -m jobs.train" in line
    # with its checkpoint on disk, the line names the command that recomputes them, with this store
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    with sessions(url).begin() as s:
        store.finish_run(s, run_id, "complete", checkpoint_path=str(ckpt))
    assert run_job("--db", url, "--run", str(run_id)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"`python -m jobs.cams --run {run_id} --db {url}`" in line
    with sessions(url)() as s:
        assert calibration_for(s, run_id) is None


def test_no_valid_logits_and_bad_bins_are_one_line(tmp_path, capsys):
    url, run_id, _ = build_store(tmp_path, n_classes=4, n_per_class=3, seed=2)
    add_logits(url, run_id, splits=["test"])
    assert run_job("--db", url, "--run", str(run_id)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no validation predictions with logits" in line
    add_logits(url, run_id)
    assert run_job("--db", url, "--run", str(run_id), "--bins", "0") == 2
    assert "bins must be an integer in 1..1000, got 0" in capsys.readouterr().err


def test_all_correct_and_one_class_give_defined_numbers(tmp_path, capsys):
    for name, kwargs in (("clean", dict(n_classes=5, with_errors=False)), ("one", dict(n_classes=1))):
        url, run_id, _ = build_store(tmp_path / name, n_per_class=4, seed=3, **kwargs)
        add_logits(url, run_id)
        assert run_job("--db", url, "--run", str(run_id), "--json") == 0
        raw = capsys.readouterr().out
        assert "NaN" not in raw and "Infinity" not in raw
        out = json.loads(raw)
        values = [out["temperature"]] + [out[s][k] for s in ("valid", "test") for k in SPLIT_KEYS - {"bins", "n"}]
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), (name, out)
        assert out["valid"]["n"] == 4 * kwargs["n_classes"]


def test_calibration_after_training_logs_instead_of_failing(tmp_path, caplog):
    url, run_id, _ = build_store(tmp_path, n_classes=4, n_per_class=3, seed=2)
    with caplog.at_level(logging.WARNING, logger="jobs.calibrate"):
        assert job.calibrate_after_training(sessions(url), run_id) is None
    assert "calibration skipped" in caplog.text and "has no stored logits" in caplog.text
    add_logits(url, run_id)
    report = job.calibrate_after_training(sessions(url), run_id)
    assert report is not None and report["temperature"] > 0


# --------------------------------------------------------------------------- a real tiny run

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from jobs import train as train_job
    from tests.conftest import make_dataset
    from tests.test_train import TINY

    tmp = tmp_path_factory.mktemp("trained")
    data = make_dataset(tmp / "data", per_split={"train": 4, "valid": 3, "test": 2})
    db = f"sqlite:///{tmp / 's.db'}"
    args = train_job.get_args_parser().parse_args(["--data", str(data), "--db", db, "--out", str(tmp / "ck"), *TINY])
    assert train_job.main(args) == 0
    return db


@pytest.mark.slow
def test_training_stores_logits_and_a_calibration(trained):
    with sessions(trained)() as s:
        row = calibration_for(s, 1)
        coverage = logits_coverage(s, 1).set_index("split")
    assert row is not None and row.temperature > 0 and set(row.report) == {"temperature", "valid", "test"}
    assert list(coverage.index) == ["valid", "test"]
    assert (coverage["with_logits"] == coverage["predictions"]).all() and coverage["predictions"].sum() == 15


@pytest.mark.slow
def test_cams_fills_the_logits_of_an_older_run(trained, capsys):
    from jobs import cams as cams_job

    S = sessions(trained)
    with S.begin() as s:  # what a run of schema 1 looks like: predictions without logits, no calibration
        before = {p.image_id: decode_logits(p.logits, 3)
                  for p in s.scalars(select(Prediction).where(Prediction.run_id == 1))}
        s.execute(update(Prediction).values(logits=None))
        s.execute(CalibrationRow.__table__.delete())
    assert run_job("--db", trained, "--run", "1") == 2
    assert f"`python -m jobs.cams --run 1 --db {trained}`" in capsys.readouterr().err
    args = cams_job.get_args_parser().parse_args(["--db", trained, "--run", "1", "--workers", "0", "--device", "cpu",
                                                  "--no-cams"])
    assert cams_job.main(args) == 0
    with S() as s:
        coverage = logits_coverage(s, 1)
        after = {p.image_id: decode_logits(p.logits, 3)
                     for p in s.scalars(select(Prediction).where(Prediction.run_id == 1))}
    assert (coverage["with_logits"] == coverage["predictions"]).all()
    assert after.keys() == before.keys()  # the same images, recomputed from the same checkpoint
    np.testing.assert_allclose(np.stack(list(after.values())), np.stack([before[i] for i in after]), atol=1e-2)
    assert run_job("--db", trained, "--run", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["valid"]["n"] == 9
