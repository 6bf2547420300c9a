"""End to end: a tiny two-phase run writes a complete store that ``jobs.runs --json`` reports."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.cammaps import DEFAULT_METHOD, GRADIENT_METHODS
from db import queries, store
from db.models import CamMap, EpochRow, EvalRow, ImageRow, Prediction, Run
from jobs import runs as runs_job
from jobs import train as train_job
from tests.conftest import make_dataset

TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "4",
        "--workers", "0", "--weights", "none", "--device", "cpu"]


def run_train(tmp_path: Path, data: Path, *extra: str) -> tuple[str, int]:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", db, "--out", str(tmp_path / "ck"), *TINY, *extra])
    assert train_job.main(args) == 0
    return db, 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = make_dataset(tmp / "data", per_split={"train": 4, "valid": 3})
    (data / "valid" / "beta" / "broken.jpg").write_bytes(b"not a jpeg")
    db, run_id = run_train(tmp, data, "--run-name", "tiny run")
    return tmp, data, db, run_id


def test_store_is_complete(tiny_run):
    tmp, data, db, run_id = tiny_run
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        run = s.get(Run, run_id)
        assert run.status == "complete" and run.name == "tiny run"
        assert queries.class_names(s, run_id) == ["alpha", "beta", "gamma"]
        assert run.absent_splits.keys() == {"test"}
        assert Path(run.checkpoint_path).is_file()
        assert run.config["epochs_frozen"] == 1 and run.config["image_size"] == 32
        epochs = s.scalars(select(EpochRow).where(EpochRow.run_id == run_id).order_by(EpochRow.global_epoch)).all()
        assert [(e.phase, e.epoch) for e in epochs] == [(1, 1), (2, 1)]
        assert all(e.val_acc is not None and e.seconds > 0 for e in epochs)
        n_valid = s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.split == "valid",
                                                                             ImageRow.run_id == run_id))
        assert n_valid == 10
        broken = s.scalars(select(ImageRow).where(ImageRow.relpath.like("%broken.jpg"),
                                                  ImageRow.run_id == run_id)).one()
        assert broken.skipped and "cannot" in broken.skip_reason
        n_pred = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.run_id == run_id))
        n_pred_maps = s.scalar(select(func.count()).select_from(CamMap).where(CamMap.target == "pred",
                                                                               CamMap.run_id == run_id))
        n_wrong = s.scalar(select(func.count()).select_from(Prediction).join(ImageRow)
                           .where(Prediction.pred != ImageRow.label, Prediction.run_id == run_id))
        n_true_maps = s.scalar(select(func.count()).select_from(CamMap).where(CamMap.target == "true",
                                                                               CamMap.run_id == run_id))
        k = len(GRADIENT_METHODS)  # every gradient method by default
        assert n_pred == 9 and n_pred_maps == 9 * k and n_true_maps == n_wrong * k
        ev = s.get(EvalRow, (run_id, "valid"))
        assert ev.status == "complete" and ev.n_images == 9 and 0 <= ev.top1 <= ev.top5 <= 1
        p = s.scalars(select(Prediction).where(Prediction.run_id == run_id)).first()
        assert len(p.top5_idx) == 3 and abs(sum(p.top5_prob) - 1) < 1e-4
        cam = s.scalars(select(CamMap).where(CamMap.method == DEFAULT_METHOD, CamMap.run_id == run_id)).first()
        assert len(cam.data) == 2 * cam.h * cam.w
        assert run.cam_layer == "features.35" and run.cam_methods == list(GRADIENT_METHODS)
        assert len(p.logits) == 2 * 3  # float16 logits of the three classes
        hashes = s.scalars(select(ImageRow.sha256).where(ImageRow.skipped.is_(False), ImageRow.run_id == run_id)).all()
        assert all(h is not None and len(h) == 64 for h in hashes)


def test_runs_json_reports_the_run(tiny_run, capsys):
    _, _, db, run_id = tiny_run
    assert runs_job.main(runs_job.get_args_parser().parse_args(["--db", db, "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    (r,) = out
    assert r["id"] == run_id and r["status"] == "complete" and r["classes"] == 3
    v = r["splits"]["valid"]
    assert (v["images"], v["predictions"], v["skipped"], v["maps"]) == (10, 9, 1, 9)
    assert v["top1"] is not None and r["absent_splits"]["test"]
    (snap,) = r["snapshots"]  # the phase-1 snapshot is listed under its run, not as a run
    assert snap["stage"] == "phase1" and snap["parent_id"] == run_id and snap["status"] == "complete"
    assert snap["splits"]["valid"]["predictions"] == 9


def test_runs_cli_as_a_subprocess(tiny_run):
    _, _, db, _ = tiny_run
    out = subprocess.run([sys.executable, "-m", "jobs.runs", "--db", db], capture_output=True, text=True,
                         check=True).stdout
    assert "tiny run" in out and "[complete]" in out and "test  absent" in out
    snap_line = next(line for line in out.splitlines() if "tiny run:phase1" in line)
    assert snap_line.startswith("    #") and "snapshot phase1 of #1" in snap_line


def test_phase1_snapshot_is_a_run_of_its_own(tiny_run):
    """The model at the end of phase 1, evaluated like the final one and stored as run '<name>:phase1'."""
    tmp, data, db, run_id = tiny_run
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        (snap,) = s.scalars(select(Run).where(Run.parent_id == run_id)).all()
        assert (snap.stage, snap.name, snap.status, snap.best_epoch) == ("phase1", "tiny run:phase1", "complete", 1)
        assert Path(snap.checkpoint_path).name == "phase1.pt" and Path(snap.checkpoint_path).is_file()
        assert queries.class_names(s, snap.id) == queries.class_names(s, run_id)
        assert [(e.phase, e.epoch) for e in s.scalars(select(EpochRow).where(EpochRow.run_id == snap.id))] == [(1, 1)]

        def images(rid):
            return sorted(s.execute(select(ImageRow.split, ImageRow.relpath, ImageRow.sha256, ImageRow.skipped)
                                    .where(ImageRow.run_id == rid)).all())
        assert images(snap.id) == images(run_id)
        ev = s.get(EvalRow, (snap.id, "valid"))
        assert ev.status == "complete" and ev.n_images == 9 and snap.metrics["valid"]["images"] == 9
        preds = s.scalars(select(Prediction).where(Prediction.run_id == snap.id)).all()
        assert len(preds) == 9 and all(p.logits is not None and len(p.logits) == 6 for p in preds)
        maps = s.scalar(select(func.count()).select_from(CamMap).where(CamMap.run_id == snap.id,
                                                                        CamMap.target == "pred"))
        assert maps == 9 * len(GRADIENT_METHODS) and snap.cam_methods == list(GRADIENT_METHODS)  # as the run's
        # 'latest' and the dashboard's default are the run, never its snapshot (whose id is higher)
        assert snap.id > run_id and store.resolve_run(s, "latest").id == run_id
        assert queries.default_run_id(s) == run_id
        before = {p.image_id: (p.pred, round(p.confidence, 5)) for p in preds}
        final = {p.image_id: p.pred for p in s.scalars(select(Prediction).where(Prediction.run_id == run_id))}
    # Every job works on it: jobs.cams recomputes its predictions from phase1.pt and finds the same ones.
    from jobs import cams as cams_job
    assert cams_job.main(cams_job.get_args_parser().parse_args(
        ["--db", db, "--run", "tiny run:phase1", "--workers", "0", "--device", "cpu"])) == 0
    with S() as s:
        after = {p.image_id: (p.pred, round(p.confidence, 5))
                 for p in s.scalars(select(Prediction).where(Prediction.run_id == snap.id))}
        assert after == before
        assert {p.image_id: p.pred for p in s.scalars(select(Prediction).where(Prediction.run_id == run_id))} == final


def test_no_phase1_snapshot_flag(tmp_path):
    data = make_dataset(tmp_path / "d", per_split={"train": 2, "valid": 1})
    db, _ = run_train(tmp_path, data, "--no-phase1-snapshot")
    S = store.make_sessionmaker(store.make_engine(db, readonly=True))
    with S() as s:
        assert [(r.stage, r.status) for r in s.scalars(select(Run))] == [(None, "complete")]
    assert list((tmp_path / "ck").glob("*/phase1.pt")) == []


def flag_help(parser) -> dict[str, tuple[argparse.Action, str]]:
    """Each flag's action and its help as ``--help`` prints it, whitespace collapsed."""
    out = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            text = " ".join(parser._get_formatter()._format_action(action).split())
            out[action.option_strings[-1]] = (action, text)
    return out


def test_help_states_each_flags_actual_default(tmp_path):
    parser = train_job.get_args_parser()
    flags = flag_help(parser)
    assert {"--data", "--db", "--epochs-frozen", "--lr-finetune", "--label-smoothing", "--resume"} <= set(flags)
    for flag, (action, text) in flags.items():
        assert text.count("(default: ") == 1 and "(default: None)" not in text, (flag, text)
        if action.dest in train_job.REAL_DEFAULTS:
            real, demo = train_job.REAL_DEFAULTS[action.dest], train_job.DEMO_DEFAULTS[action.dest]
            assert f"(default: {real}, demo {demo})" in text, (flag, text)
        elif action.default is not None:
            assert f"(default: {action.default})" in text, (flag, text)
    # ... and those two-mode defaults are what the job then uses.
    for argv, expected in (([], train_job.DEMO_DEFAULTS), (["--data", str(tmp_path)], train_job.REAL_DEFAULTS)):
        args = train_job.resolve_defaults(parser.parse_args(argv))
        for key, value in expected.items():
            if key != "weights":  # "auto" resolves to imagenet or none, as its help says
                assert getattr(args, key) == value, key
        assert args.weights in ("imagenet", "none")


def test_bad_dataset_is_one_line_and_no_run(tmp_path):
    data = make_dataset(tmp_path / "d", per_split={"train": 2, "valid": 1})
    (data / "valid" / "zeta").mkdir()
    (data / "valid" / "alpha" / "000.jpg").rename(data / "valid" / "zeta" / "000.jpg")
    db = tmp_path / "s.db"
    r = subprocess.run([sys.executable, "-m", "jobs.train", "--data", str(data), "--db", str(db), *TINY],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "zeta" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_schema_version_is_refused(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    eng = store.make_engine(db)
    with eng.begin() as c:
        c.exec_driver_sql("UPDATE schema_info SET value='0' WHERE key='version'")
    with pytest.raises(store.StoreError, match="schema version 0"):
        store.make_engine(db)


def test_sqlite_store_uses_wal(tmp_path):
    eng = store.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    with eng.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_overlong_run_name_is_refused_before_anything_is_written(tmp_path):
    data = make_dataset(tmp_path / "d", per_split={"train": 1, "valid": 1})
    r = subprocess.run([sys.executable, "-m", "jobs.train", "--data", str(data), "--db", str(tmp_path / "s.db"),
                        "--run-name", "x" * 201, *TINY], capture_output=True, text=True)
    assert r.returncode == 2 and "--run-name must have 1 to 200 characters" in r.stderr
    assert not (tmp_path / "s.db").exists()


def test_two_runs_of_one_name_keep_their_own_checkpoints(tmp_path):
    data = make_dataset(tmp_path / "d", per_split={"train": 2, "valid": 1})
    db = f"sqlite:///{tmp_path / 's.db'}"
    for _ in range(2):
        args = train_job.get_args_parser().parse_args(
            ["--data", str(data), "--db", db, "--out", str(tmp_path / "ck"), "--run-name", "same", *TINY,
             "--epochs-finetune", "0"])
        assert train_job.main(args) == 0
    S = store.make_sessionmaker(store.make_engine(db, readonly=True))
    with S() as s:
        paths = [r.checkpoint_path for r in s.query(Run).order_by(Run.id)]
    assert len(paths) == 2 and len(set(paths)) == 2
    assert [Path(p).parent.name for p in paths] == ["same", "same-2"]
