"""Several CAM methods end to end: training stores each method's maps, ``jobs.cams --methods`` adds one to a
run, ``jobs.trust --methods`` scores and ranks them, and bad input is one line."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from core import cam_methods
from core.cammaps import (
    BASELINES, CLASS_FREE_METHODS, TARGET_CONTRAST, TARGET_TRUE, decode_maps, stored_targets,
)
from db import queries, store
from db.models import CamMap, ImageRow, PointingScore, Prediction, Run
from jobs import cams as cams_job
from jobs import train as train_job
from jobs import trust as trust_job
from jobs.common import run_cli
from tests.conftest import make_dataset

# Without the phase-1 snapshot: these tests count the maps of one run, and the snapshot is a run of its own.
TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "4",
        "--workers", "0", "--weights", "none", "--device", "cpu", "--no-phase1-snapshot"]
TRAINED = ("gradcam", "eigencam")
ADDED = "layercam"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained with two methods on a set with a planted mistake (an alpha image filed as beta),
    a black image, and object boxes for the pointing game."""
    tmp = tmp_path_factory.mktemp("camjobs")
    data = make_dataset(tmp / "data", per_split={"train": 3, "valid": 2}, size=32)
    shutil.copyfile(data / "valid" / "alpha" / "000.jpg", data / "valid" / "beta" / "900.jpg")
    Image.new("RGB", (32, 32)).save(data / "valid" / "gamma" / "black.jpg")
    boxes = {str(p.relative_to(data)): [4, 4, 28, 28] for p in data.rglob("*.jpg")}
    (data / "boxes.json").write_text(json.dumps(boxes))
    db = f"sqlite:///{tmp / 's.db'}"
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", db, "--out", str(tmp / "ck"), "--cam-methods", ",".join(TRAINED), *TINY])
    assert train_job.main(args) == 0
    return db


def session(db):
    return store.make_sessionmaker(store.make_engine(db, create=False))()


def stored(s) -> dict[tuple[int, str, str], tuple[int, bytes]]:
    return {(r.image_id, r.method, r.target): (r.class_index, bytes(r.data)) for r in s.scalars(select(CamMap))}


def expected_rows(s, methods) -> dict[tuple[int, str, str], int]:
    """(image, method, target) -> class the predictions imply the store holds."""
    out = {}
    for p, label in s.execute(select(Prediction, ImageRow.label).join(ImageRow, ImageRow.id == Prediction.image_id)):
        for m in methods:
            for t in stored_targets(m, p.pred == label):
                out[(p.image_id, m, t)] = label if t == TARGET_TRUE else p.pred
    return out


def test_training_stores_every_method_for_every_target(run):
    with session(run) as s:
        assert s.get(Run, 1).cam_methods == list(TRAINED)
        rows = stored(s)
        expected = expected_rows(s, TRAINED)
        wrong = s.scalar(select(Prediction.image_id).join(ImageRow).where(Prediction.pred != ImageRow.label).limit(1))
    assert wrong is not None, "the planted mistake should be one"
    assert {k: c for k, (c, _) in rows.items()} == expected
    assert (wrong, "gradcam", TARGET_CONTRAST) in rows and (wrong, "eigencam", TARGET_TRUE) not in rows
    assert CLASS_FREE_METHODS == tuple(m for m, v in cam_methods.METHODS.items() if not v.class_specific)
    # Never a NaN: every stored map (the black image's too) decodes to finite values.
    for _, data in rows.values():
        assert np.isfinite(decode_maps(data, 1, 1, len(data) // 2)).all()


def test_cams_methods_adds_a_method_and_keeps_the_rest(run):
    with session(run) as s:
        before = stored(s)
        preds = {p.image_id: (p.pred, p.confidence, bytes(p.logits)) for p in s.scalars(select(Prediction))}
    args = cams_job.get_args_parser().parse_args(["--db", run, "--methods", ADDED, "--device", "cpu",
                                                 "--workers", "0"])
    assert cams_job.main(args) == 0
    with session(run) as s:
        after = stored(s)
        assert {p.image_id: (p.pred, p.confidence, bytes(p.logits)) for p in s.scalars(select(Prediction))} == preds
        assert s.get(Run, 1).cam_methods == [*TRAINED, ADDED]
        assert queries.stored_methods(s, 1) == ["gradcam", ADDED, "eigencam"]
        expected = expected_rows(s, (ADDED,))
    assert {k: v for k, v in after.items() if k[1] != ADDED} == before  # other methods untouched
    assert {k: c for k, (c, _) in after.items() if k[1] == ADDED} == expected
    # Again: the method's maps are replaced, not added twice.
    assert cams_job.main(cams_job.get_args_parser().parse_args(["--db", run, "--methods", ADDED, "--device", "cpu",
                                                               "--workers", "0"])) == 0
    with session(run) as s:
        assert len(stored(s)) == len(after)


@pytest.mark.parametrize("job, argv", [
    (train_job, ["--cam-methods", "gradcam,gradcamm"]),
    (cams_job, ["--methods", "gradcamm"]),
    (trust_job, ["--methods", "gradcam,nope"]),
])
def test_unknown_method_is_one_line_and_exit_2(run, job, argv, capsys):
    assert run_cli(job.main, job.get_args_parser(), ["--db", run, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown CAM method" in err and "expected one of gradcam" in err


def test_scorecam_on_too_many_channels_is_one_line(run, monkeypatch, capsys):
    monkeypatch.setattr(cam_methods, "SCORECAM_MAX_CHANNELS", 64)  # features.35 has 512
    argv = ["--db", run, "--methods", "scorecam", "--device", "cpu", "--workers", "0"]
    assert run_cli(cams_job.main, cams_job.get_args_parser(), argv) == 2
    # one error line (an INFO line may say which run 'latest' picked); no traceback
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and "512 channels" in errors[0] and "Score-CAM" in errors[0] and "Traceback" not in err
    with session(run) as s:
        assert "scorecam" not in s.get(Run, 1).cam_methods


def test_trust_ranks_the_methods(run):
    buf = io.StringIO()
    argv = ["--db", run, "--json", "--methods", "gradcam,eigencam", "--steps", "2", "--sample", "4",
            "--sanity-sample", "1", "--sanity-depth", "conv5_4", "--device", "cpu"]
    with contextlib.redirect_stdout(buf):
        assert trust_job.main(trust_job.get_args_parser().parse_args(argv)) == 0
    ranking = json.loads(buf.getvalue())["ranking"]
    table = ranking["table"]
    assert [r["method"] for r in table if r["kind"] == "method"] in (["gradcam", "eigencam"], ["eigencam", "gradcam"])
    assert [r["rank"] for r in table] == [1, 2, None, None] and [r["method"] for r in table][2:] == list(BASELINES)
    assert table[0]["score"] >= table[1]["score"]
    assert ranking["winner"] == table[0]["method"] and ranking["runner_up"] == table[1]["method"]
    assert ranking["confidence"]["n"] == 4 and 0 <= ranking["confidence"]["lo"] <= ranking["confidence"]["hi"] <= 1
    assert ranking["sentence"].count(".") >= 1 and table[0]["name"] in ranking["sentence"]
    with session(run) as s:
        frame = queries.trust_frame(s, 1, curves=False)
        points = s.scalars(select(PointingScore)).all()
        right = {p.image_id for p in s.scalars(select(Prediction).join(ImageRow)
                                               .where(Prediction.pred == ImageRow.label))}
    assert set(frame["method"]) == {"gradcam", "eigencam", *BASELINES}
    scored_right = set(frame["image_id"]) & right
    assert {(p.image_id, p.method) for p in points} == {(i, m) for i in scored_right
                                                       for m in ("gradcam", "eigencam", *BASELINES)}
    assert all(r["pointing_n"] == len(scored_right) for r in table)
