"""jobs.audit on a real tiny run: findings in the store, a readable summary and --json."""
from __future__ import annotations

import json
import shutil

import pytest

from db import store
from db.models import AuditRow
from jobs import audit as audit_job
from jobs import train as train_job
from tests.conftest import make_dataset
from tests.test_train import TINY


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    data = make_dataset(tmp / "data", per_split={"train": 4, "valid": 2}, size=48)
    # valid/beta/leak.jpg is a byte copy of a training image: leakage across splits
    shutil.copy(data / "train" / "beta" / "001.jpg", data / "valid" / "beta" / "leak.jpg")
    db = f"sqlite:///{tmp / 's.db'}"
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", db, "--out", str(tmp / "ck"), *TINY])
    assert train_job.main(args) == 0
    return db


def test_audit_finds_the_leak_and_stores_it(leaky_run, capsys):
    assert audit_job.main(audit_job.get_args_parser().parse_args(["--db", leaky_run, "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    exact = [g for g in out["groups"] if g["kind"] == "exact"]
    assert len(exact) == 1
    members = {(m["split"], m["relpath"], m["label"]) for m in exact[0]["members"]}
    assert members == {("train", "train/beta/001.jpg", 1), ("valid", "valid/beta/leak.jpg", 1)}
    assert [lk["image"]["relpath"] for lk in out["leakage"]] == ["valid/beta/leak.jpg"]
    (acc,) = out["leakage_accuracy"]
    assert acc["split"] == "valid" and acc["n"] == 7 and acc["n_leaked"] == 1 and acc["n_clean"] == 6
    S = store.make_sessionmaker(store.make_engine(leaky_run))
    with S() as s:
        row = s.get(AuditRow, 1)
        assert row is not None and len(row.report["leakage"]) == 1
    # a second audit replaces the first rather than adding to it
    assert audit_job.main(audit_job.get_args_parser().parse_args(["--db", leaky_run])) == 0
    text = capsys.readouterr().out
    assert "leaked images (valid/test also in an earlier split): 1" in text
    assert "valid 1" not in text or "->" in text


def test_top5_to_probs_rows_sum_to_one():
    p = audit_job.top5_to_probs([[2, 0], [1, 2]], [[0.7, 0.2], [0.5, 0.5]], 4)
    assert p.shape == (2, 4)
    assert abs(p.sum(1) - 1).max() < 1e-9
    assert p[0, 2] == pytest.approx(0.7) and p[0, 1] == pytest.approx(0.05)
