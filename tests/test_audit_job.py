"""jobs.audit on a real tiny run: findings in the store, a readable summary and --json."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sqlalchemy import func, select

from db import queries, store
from db.models import AuditRow
from jobs import audit as audit_job
from jobs import train as train_job
from tests.conftest import make_dataset, write_image
from tests.test_train import TINY

LEAK = "valid/beta/leak.jpg"


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    data = make_dataset(tmp / "data", per_split={"train": 4, "valid": 2}, size=48)
    # valid/beta/leak.jpg is a byte copy of a training image: leakage across splits
    shutil.copy(data / "train" / "beta" / "001.jpg", data / LEAK)
    db = f"sqlite:///{tmp / 's.db'}"
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", db, "--out", str(tmp / "ck"), *TINY])
    assert train_job.main(args) == 0
    return db, data


def stored_audits(db: str) -> tuple[int, dict]:
    """How many audit rows the store holds, and run 1's audit as the pages read it."""
    S = store.make_sessionmaker(store.make_engine(db, create=False))
    with S() as s:
        return s.scalar(select(func.count()).select_from(AuditRow)), queries.audit_report(s, 1)


def test_audit_finds_the_leak_and_stores_it(leaky_run, capsys):
    db, _ = leaky_run
    assert audit_job.main(audit_job.get_args_parser().parse_args(["--db", db, "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    exact = [g for g in out["groups"] if g["kind"] == "exact"]
    assert len(exact) == 1
    members = {(m["split"], m["relpath"], m["label"]) for m in exact[0]["members"]}
    assert members == {("train", "train/beta/001.jpg", 1), ("valid", LEAK, 1)}
    assert [lk["image"]["relpath"] for lk in out["leakage"]] == [LEAK]
    (acc,) = out["leakage_accuracy"]
    assert acc["split"] == "valid" and acc["n"] == 7 and acc["n_leaked"] == 1 and acc["n_clean"] == 6
    n, report = stored_audits(db)
    assert n == 1 and [lk["image"]["relpath"] for lk in report["leakage"]] == [LEAK]
    assert report["leakage_accuracy"] == out["leakage_accuracy"]


def test_a_second_audit_replaces_the_first(leaky_run, capsys):
    db, data = leaky_run
    assert audit_job.main(audit_job.get_args_parser().parse_args(["--db", db])) == 0
    n, first = stored_audits(db)
    assert n == 1 and len(first["leakage"]) == 1
    original = (data / LEAK).read_bytes()
    try:
        # The copy becomes an image of its own: the second audit finds no leak, and the store must say so.
        write_image(data / LEAK, np.random.default_rng(99), 48, colour=1)
        assert audit_job.main(audit_job.get_args_parser().parse_args(["--db", db])) == 0
    finally:
        (data / LEAK).write_bytes(original)
    text = capsys.readouterr().out
    assert "leaked images (valid/test also in an earlier split): 0" in text
    n, second = stored_audits(db)
    assert n == 1, "the second audit must replace the first, not sit beside it"
    assert second["leakage"] == [] and not [g for g in second["groups"] if g["kind"] == "exact"]
    assert second["created_at"] >= first["created_at"]
    assert [a["n_leaked"] for a in second["leakage_accuracy"]] == [0]

