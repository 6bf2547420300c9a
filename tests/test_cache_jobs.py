"""The jobs through the decoded cache: training with and without it, jobs.cams and jobs.trust reading it with
the same results as the JPEG files, --precision checked before anything is written, the batch size per device."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from core.cache import ENV_VAR, DecodedCache, default_cache_root
from core.data import discover
from core.dist import DistEnv
from core.feed import device_batch_size, split_feed
from db import store
from db.models import CamMap, ImageRow, Prediction, Run, TrustScore
from jobs import cams as cams_job
from jobs import train as train_job
from jobs import trust as trust_job
from jobs.common import run_cli
from tests.conftest import make_dataset

# One frozen epoch is enough here: tests/test_resume.py trains both phases through the cache.
TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "0", "--batch-size", "4",
        "--workers", "0", "--weights", "none", "--device", "cpu"]
CPU = torch.device("cpu")


def test_the_tests_cache_is_a_session_folder_that_subprocesses_inherit():
    here = default_cache_root()
    assert str(here) == os.environ[ENV_VAR] and Path.home() / ".cache" not in here.parents
    code = "from core.cache import default_cache_root; print(default_cache_root())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(here)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One store, two tiny runs of the same data: "cached" through --cache-dir, "jpeg" with --no-cache."""
    tmp = tmp_path_factory.mktemp("cachejobs")
    data = make_dataset(tmp / "data", per_split={"train": 3, "valid": 2, "test": 2})
    (data / "valid" / "beta" / "broken.jpg").write_bytes(b"not a jpeg")
    db = f"sqlite:///{tmp / 's.db'}"
    for name, extra in (("cached", ["--cache-dir", str(tmp / "cache")]),
                        ("jpeg", ["--no-cache", "--cache-dir", str(tmp / "unused")])):
        args = train_job.get_args_parser().parse_args(
            ["--data", str(data), "--db", db, "--out", str(tmp / "ck"), "--run-name", name, *TINY, *extra])
        assert train_job.main(args) == 0
    return tmp, data, db


def session(db: str):
    return store.make_sessionmaker(store.make_engine(db, create=False))()


def stored(db: str, run_name: str) -> dict:
    """relpath -> (pred, confidence, top-5, logits bytes, {target: map bytes}) of the run's predictions."""
    with session(db) as s:
        run_id = s.scalars(select(Run.id).where(Run.name == run_name)).one()
        rows = s.execute(select(ImageRow.relpath, Prediction.pred, Prediction.confidence, Prediction.top5_prob,
                                Prediction.logits)
                         .join(ImageRow, ImageRow.id == Prediction.image_id)
                         .where(Prediction.run_id == run_id)).all()
        out = {rel: (pred, conf, top5, logits, {}) for rel, pred, conf, top5, logits in rows}
        for rel, method, target, data in s.execute(select(ImageRow.relpath, CamMap.method, CamMap.target, CamMap.data)
                                                   .join(ImageRow, ImageRow.id == CamMap.image_id)
                                                   .where(CamMap.run_id == run_id)):
            out[rel][4][(method, target)] = data
    return out


def test_both_runs_store_a_prediction_for_every_image(two_runs):
    tmp, data, db = two_runs
    index = discover(data)
    usable = {s.relpath for sp in ("valid", "test") for s in index.splits[sp]} - {"valid/beta/broken.jpg"}
    with session(db) as s:
        for run in s.scalars(select(Run)):
            assert run.status == "complete" and run.config["precision"] == "fp32"
            assert run.config["no_cache"] == (run.name == "jpeg")
            broken = s.scalars(select(ImageRow).where(ImageRow.run_id == run.id,
                                                      ImageRow.relpath == "valid/beta/broken.jpg")).one()
            assert broken.skipped and "cannot" in broken.skip_reason
    for name in ("cached", "jpeg"):
        preds = stored(db, name)
        assert set(preds) == usable
        assert all(("gradcam", "pred") in maps for *_, maps in preds.values())
    # The cached run wrote one cache folder per split; --no-cache left its folder alone.
    written = sorted(p.parent.name.split("-")[1] for p in (tmp / "cache").glob("*/index.json"))
    assert written == ["test", "train", "valid"]
    assert not (tmp / "unused").exists()


def cams(db: str, run: str, *extra: str) -> None:
    args = cams_job.get_args_parser().parse_args(["--db", db, "--run", run, "--batch-size", "4", "--workers", "0",
                                                  "--device", "cpu", *extra])
    assert cams_job.main(args) == 0


def test_cams_through_the_cache_equals_its_jpeg_result_and_training_s_own(two_runs):
    """Evaluation tensors are the same on both paths, so logits and maps agree to the bit."""
    tmp, _, db = two_runs
    from_training = stored(db, "cached")  # written by training's final pass, through the cache
    cams(db, "cached", "--no-cache")
    from_jpeg = stored(db, "cached")
    cams(db, "cached", "--cache-dir", str(tmp / "cache"))
    from_cache = stored(db, "cached")
    assert from_jpeg == from_training
    assert from_cache == from_jpeg
    assert len(from_cache) == 12 and all(v[3] for v in from_cache.values())


def trust_scores(db: str, *extra: str) -> tuple[dict, list]:
    buf = io.StringIO()
    args = trust_job.get_args_parser().parse_args(
        ["--db", db, "--run", "jpeg", "--json", "--steps", "2", "--sample", "3", "--sanity-sample", "1",
         "--sanity-depth", "conv5_4", "--device", "cpu", "--methods", "gradcam", *extra])
    with contextlib.redirect_stdout(buf):
        assert trust_job.main(args) == 0
    report = json.loads(buf.getvalue())
    with session(db) as s:
        rows = s.execute(select(TrustScore.image_id, TrustScore.target, TrustScore.method,
                                TrustScore.deletion_auc, TrustScore.insertion_auc)).all()
    return {tuple(r[:3]): tuple(r[3:]) for r in rows}, report["sanity"]


def test_trust_through_the_cache_scores_the_same_sample(two_runs):
    tmp, _, db = two_runs
    jpeg, sanity_jpeg = trust_scores(db, "--no-cache")
    cached, sanity_cached = trust_scores(db, "--cache-dir", str(tmp / "cache"))
    assert len({k[0] for k in jpeg}) == 3
    assert cached == jpeg
    assert sanity_cached == sanity_jpeg


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp16", "--device", "cpu"], "error: --precision fp16 needs a CUDA device"),
    (["--device", "cpu", "--precision", "fp16", "--amp"], "error: --precision fp16 needs a CUDA device"),
])
def test_precision_is_checked_before_the_run_starts(tmp_path, capsys, argv, message):
    data = make_dataset(tmp_path / "data", per_split={"train": 1, "valid": 1})
    db = tmp_path / "s.db"
    rc = run_cli(train_job.main, train_job.get_args_parser(),
                 ["--data", str(data), "--db", str(db), "--out", str(tmp_path / "ck"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(message) and err.count("\n") == 1, err
    if db.exists():
        with session(str(db)) as s:
            assert s.scalars(select(Run)).all() == []


def test_an_unknown_precision_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        train_job.get_args_parser().parse_args(["--precision", "fp8"])
    assert exc.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_device_batch_size():
    assert device_batch_size(CPU, None, cpu=8, cuda=64) == 8
    assert device_batch_size(torch.device("cuda", 0), None, cpu=8, cuda=64) == 64
    assert device_batch_size("cuda", 3, cpu=8, cuda=64) == 3
    with pytest.raises(ValueError, match="--batch-size must be at least 1, got 0"):
        device_batch_size(CPU, 0, cpu=8, cuda=64)


@pytest.mark.parametrize("world", [1, 2])
def test_positions_read_those_images_of_the_split_on_both_paths(two_runs, world, monkeypatch):
    monkeypatch.setattr("core.dist.barrier", lambda env: None)  # the ranks of this test take turns
    tmp, data, _ = two_runs
    index = discover(data)
    positions = [5, 0, 3]
    common = dict(train=False, size=32, batch_size=2, device=CPU, workers=0, positions=positions)
    whole = {int(i): x for x, _, idx, _, _ in split_feed(index, "valid", train=False, size=32, batch_size=8,
                                                         env=DistEnv(), device=CPU, workers=0).loader
             if x is not None for i, x in zip(idx, x)}
    for cache in (None, tmp / "cache"):
        seen = []
        for rank in range(world):
            feed = split_feed(index, "valid", env=DistEnv(rank=rank, world_size=world),
                              cache=DecodedCache(cache) if cache else None, **common)
            for x, _, idx, bad, _ in feed.loader:
                assert not bad
                for i, xi in zip(idx.tolist(), x):
                    assert torch.equal(xi, whole[i])
                    seen.append(i)
        assert sorted(seen) == sorted(positions) and (world == 2 or seen == positions)
    with pytest.raises(ValueError, match="outside the split of 7 images"):
        split_feed(index, "valid", env=DistEnv(), **{**common, "positions": [7]})
    with pytest.raises(ValueError, match="training feed reads the whole split"):
        split_feed(index, "train", env=DistEnv(), **{**common, "train": True})
