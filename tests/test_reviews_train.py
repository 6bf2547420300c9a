"""``jobs.train --apply-reviews`` / ``--corrections``: a retrain relabels and drops exactly what the latest
verdicts say, records it in the run, and leaves the evaluation labels alone unless told."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from core import reviews as rv
from core.data import discover, file_sha256
from db import store
from db.models import ImageRow, Run
from db.review_writer import ReviewWriter
from jobs import corrections
from jobs import train as train_job
from tests.conftest import make_dataset

TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "4",
        "--workers", "0", "--weights", "none", "--device", "cpu", "--no-cams", "--eval-splits", "valid"]
CLASSES = ["alpha", "beta", "gamma"]
T0 = datetime(2026, 4, 1, 9, 0, 0)

RELABELS = {("train", "train/alpha/000.jpg"): "beta", ("train", "train/beta/001.jpg"): "gamma",
            ("train", "train/gamma/002.jpg"): "alpha"}
DROPS = [("train", "train/alpha/003.jpg"), ("test", "test/beta/000.jpg")]
EVAL_RELABEL = (("valid", "valid/gamma/000.jpg"), "alpha")


def verdict(root: Path, key, v, new=None, t=T0, note="") -> rv.Verdict:
    split, rel = key
    return rv.Verdict(file_sha256(root / rel), split, rel, rel.split("/")[1], v, new, note, "ann", t)


def verdicts(root: Path) -> list[rv.Verdict]:
    out = [verdict(root, k, rv.RELABEL, new) for k, new in RELABELS.items()]
    out += [verdict(root, k, rv.DROP) for k in DROPS]
    out.append(verdict(root, EVAL_RELABEL[0], rv.RELABEL, EVAL_RELABEL[1]))
    out.append(verdict(root, ("train", "train/beta/000.jpg"), rv.AMBIGUOUS))
    # an earlier verdict that the latest overrides: this image is kept with its label
    out.append(verdict(root, ("train", "train/gamma/003.jpg"), rv.DROP, t=T0 - timedelta(days=1)))
    out.append(verdict(root, ("train", "train/gamma/003.jpg"), rv.FINE))
    return out


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", per_split={"train": 4, "valid": 2, "test": 2})


@pytest.mark.slow
def test_retrain_applies_three_relabels_and_two_drops(tmp_path, data):
    db = f"sqlite:///{tmp_path / 'store.db'}"
    store.make_engine(db).dispose()
    ReviewWriter(db).save(verdicts(data))  # verdicts keyed by file hash: no earlier run of this data needed
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", db, "--out", str(tmp_path / "ck"), "--apply-reviews", "--eval-splits",
         "valid,test", *TINY[:-2]])
    assert train_job.main(args) == 0
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        run = s.scalars(select(Run).where(Run.stage.is_(None))).one()  # the run, not its phase-1 snapshot
        assert run.status == "complete"
        labels = {(r.split, r.relpath): CLASSES[r.label]
                  for r in s.scalars(select(ImageRow).where(ImageRow.run_id == run.id))}
    applied = run.config["reviews_applied"]
    assert (applied["relabelled"], applied["dropped"], applied["refused"]) == (3, 2, 1)
    assert applied["verdicts"] == 8 and applied["source"].startswith("store ")
    assert {(e["split"], e["relpath"]): e["new_label"] for e in applied["relabel_list"]} == RELABELS
    assert sorted((e["split"], e["relpath"]) for e in applied["drop_list"]) == sorted(DROPS)
    assert [(e["split"], e["relpath"]) for e in applied["refused_list"]] == [EVAL_RELABEL[0]]
    # the new run: relabelled images carry their new class, dropped ones are absent, the rest as on disk
    assert len(labels) == 3 * (4 + 2 + 2) - 2
    for key, new in RELABELS.items():
        assert labels[key] == new
    assert not set(DROPS) & set(labels)
    assert labels[EVAL_RELABEL[0]] == "gamma"  # an evaluation label is not changed without the flag
    assert labels[("train", "train/gamma/003.jpg")] == "gamma"
    untouched = {k: v for k, v in labels.items() if k not in RELABELS}
    assert all(v == k[1].split("/")[1] for k, v in untouched.items())


def plan(data: Path, tmp_path: Path, *extra: str) -> tuple[dict, object]:
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", f"sqlite:///{tmp_path / 's.db'}", *extra])
    index = discover(data)
    return corrections.plan_corrections(args, index), index


def test_a_corrections_file_with_eval_relabels_allowed(tmp_path, data):
    path = tmp_path / "corrections.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        rv.write_csv(verdicts(data), fh)
    applied, index = plan(data, tmp_path, "--corrections", str(path), "--allow-eval-relabel")
    assert (applied["relabelled"], applied["dropped"], applied["refused"]) == (4, 2, 0)
    assert applied["source"] == f"file {path.resolve()}" and applied["allow_eval_relabel"] is True
    fixed = corrections.replay(index, applied)
    # replaying the recorded list gives what core.reviews.apply_corrections gives
    expected, _ = rv.apply_corrections(index, rv.latest(verdicts(data)), corrections.dataset_hashes(index),
                                       allow_eval_relabel=True)
    assert fixed.splits == expected.splits
    assert {s.relpath: CLASSES[s.label] for s in fixed.splits["valid"]}[EVAL_RELABEL[0][1]] == "alpha"


def test_a_recorded_list_that_does_not_fit_the_data_is_refused(data):
    index = discover(data)
    with pytest.raises(ValueError, match=r"does not have: train/alpha/999.jpg \(train\)"):
        corrections.replay(index, {"relabel_list": [], "drop_list": [{"split": "train", "relpath": "train/alpha/999.jpg"}]})
    with pytest.raises(ValueError, match="not classes of this dataset"):
        corrections.replay(index, {"relabel_list": [{"split": "train", "relpath": "train/alpha/000.jpg",
                                                     "new_label": "hockey"}]})


def test_a_bad_corrections_file_stops_before_training(tmp_path, data):
    path = tmp_path / "bad.csv"
    path.write_text("split,relpath,verdict,new_label\ntrain,train/alpha/000.jpg,relabel,hockey\n", encoding="utf-8")
    with pytest.raises(rv.CorrectionsError, match="line 2: unknown class 'hockey'"):
        plan(data, tmp_path, "--corrections", str(path))


def test_the_flags(capsys):
    parser = train_job.get_args_parser()
    help_text = " ".join(parser.format_help().split())
    assert "changes what accuracy means" in help_text and "--allow-eval-relabel" in help_text
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--apply-reviews", "--corrections", "x.csv"])
    assert exit_.value.code == 2
    args = parser.parse_args([])
    assert args.reviews_applied is None and not args.apply_reviews
