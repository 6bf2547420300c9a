"""Verdicts, the corrections CSV and how corrections change a dataset index (no store, no model)."""
from __future__ import annotations

import hashlib
import io
from datetime import datetime
from pathlib import Path

import pytest

from core import reviews as rv
from core.data import DatasetIndex, Sample

CLASSES = ["archery", "baseball", "curling"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


IMAGES = {  # (split, relpath) -> label
    ("train", "train/archery/1.jpg"): "archery",
    ("train", "train/baseball/1.jpg"): "baseball",
    ("train", "train/curling/1.jpg"): "curling",
    ("valid", "valid/archery/1.jpg"): "archery",
    ("test", "test/curling/1.jpg"): "curling",
}
HASHES = {key: sha("/".join(key)) for key in IMAGES}


def find(sha256: str, split: str, relpath: str):
    for (s, r), h in HASHES.items():
        if h == sha256 or (not sha256 and (s, r) == (split, relpath)):
            return h, s, r, IMAGES[(s, r)]
    return None


def verdict(key, v, new=None, t=None, note="", reviewer="ann"):
    return rv.Verdict(HASHES[key], key[0], key[1], IMAGES[key], v, new, note, reviewer, t)


def index() -> DatasetIndex:
    splits: dict[str, list[Sample]] = {}
    for (s, r), label in IMAGES.items():
        splits.setdefault(s, []).append(Sample(r, CLASSES.index(label)))
    return DatasetIndex(root=Path("/data"), classes=CLASSES, splits=splits)


def test_csv_round_trip_keeps_every_field(tmp_path):
    hostile = 'a "quote", a comma,\nnewline <script>alert(1)</script> \'; DROP TABLE reviews; --'
    vs = [verdict(("train", "train/archery/1.jpg"), rv.RELABEL, "curling", datetime(2026, 1, 2, 3, 4, 5), hostile),
          verdict(("valid", "valid/archery/1.jpg"), rv.AMBIGUOUS, t=datetime(2026, 1, 2, 3, 4, 6), reviewer="Zoë"),
          verdict(("test", "test/curling/1.jpg"), rv.DROP, t=datetime(2026, 1, 2, 3, 4, 7))]
    path = tmp_path / "c.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        assert rv.write_csv(vs, fh) == 3
    assert rv.read_csv(path, CLASSES, find) == vs


def test_rows_are_found_by_split_and_relpath_without_a_hash(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("relpath,split,verdict,new_label\ntrain/baseball/1.jpg,train,relabel,archery\n")
    (v,) = rv.read_csv(path, CLASSES, find, default_reviewer_name="bob")
    assert v.sha256 == HASHES[("train", "train/baseball/1.jpg")] and v.new_label == "archery" and v.reviewer == "bob"


def test_a_bad_file_is_rejected_whole_with_line_numbers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "relpath,split,sha256,verdict,new_label\n"
        "train/archery/1.jpg,train,,fine,\n"            # line 2: good
        "train/archery/1.jpg,train,,relabel,hockey\n"    # line 3: unknown class
        "nowhere.jpg,train,,drop,\n"                     # line 4: unknown image
        "train/curling/1.jpg,train,,burn,\n"             # line 5: bad verdict
        "train/curling/1.jpg,train,,relabel,\n"          # line 6: relabel without a class
    )
    with pytest.raises(rv.CorrectionsError) as err:
        rv.read_csv(path, CLASSES, find)
    msg = str(err.value)
    assert "4 bad line(s)" in msg and "nothing was imported" in msg
    for line, what in ((3, "unknown class 'hockey'"), (4, "unknown image"), (5, "verdict must be one of"),
                       (6, "a 'relabel' verdict needs the new label")):
        assert f"line {line}: {what}" in msg
    assert "line 2" not in msg


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("relpath,label\nx.jpg,archery\n")
    with pytest.raises(rv.CorrectionsError, match="expected the columns"):
        rv.read_csv(path, CLASSES, find)


def test_the_latest_verdict_counts():
    key = ("train", "train/archery/1.jpg")
    old = verdict(key, rv.DROP, t=datetime(2026, 1, 1))
    new = verdict(key, rv.FINE, t=datetime(2026, 1, 2))
    assert rv.latest([new, old])[HASHES[key]] is new
    assert rv.latest([old, new])[HASHES[key]] is new


def test_apply_relabels_train_drops_anywhere_and_refuses_eval_relabels():
    vs = rv.latest([
        verdict(("train", "train/archery/1.jpg"), rv.RELABEL, "curling"),
        verdict(("train", "train/baseball/1.jpg"), rv.DROP),
        verdict(("train", "train/curling/1.jpg"), rv.AMBIGUOUS),
        verdict(("valid", "valid/archery/1.jpg"), rv.RELABEL, "baseball"),
        verdict(("test", "test/curling/1.jpg"), rv.DROP),
    ])
    before = index()
    after, applied = rv.apply_corrections(before, vs, HASHES)
    labels = {(s, x.relpath): CLASSES[x.label] for s, xs in after.splits.items() for x in xs}
    assert labels == {("train", "train/archery/1.jpg"): "curling", ("train", "train/curling/1.jpg"): "curling",
                      ("valid", "valid/archery/1.jpg"): "archery"}
    assert [d["relpath"] for d in applied.relabelled] == ["train/archery/1.jpg"]
    assert sorted(d["relpath"] for d in applied.dropped) == ["test/curling/1.jpg", "train/baseball/1.jpg"]
    assert [d["relpath"] for d in applied.refused] == ["valid/archery/1.jpg"]
    assert applied.ignored == 1
    assert len(before.splits["train"]) == 3  # the input index is not changed
    _, allowed = rv.apply_corrections(before, vs, HASHES, allow_eval_relabel=True)
    assert len(allowed.relabelled) == 2 and not allowed.refused


@pytest.mark.parametrize("kwargs, message", [
    (dict(verdict="relabel"), "needs the new label"),
    (dict(verdict="fine", new_label="archery"), "only a 'relabel' verdict"),
    (dict(verdict="drop", sha256="xyz"), "sha256 must be"),
    (dict(verdict="drop", note="x" * (rv.MAX_NOTE + 1)), "at most"),
])
def test_bad_verdicts_are_refused(kwargs, message):
    base = dict(sha256=sha("a"), split="train", relpath="a.jpg", label="archery")
    with pytest.raises(ValueError, match=message):
        rv.Verdict(**{**base, **kwargs})


def test_file_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 100_000)
    assert rv.file_sha256(p, chunk=4096) == hashlib.sha256(b"abc" * 100_000).hexdigest()
