"""``python -m jobs.reviews``: export and import of verdicts as a corrections CSV."""
from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from core import reviews as rv
from db import queries, store
from db.builder import add_hashes, build_store
from db.review_writer import ReviewWriter
from jobs import reviews as job

REPO = Path(__file__).resolve().parents[1]
NOTE = "<b>bold</b> \"quoted\", it's; DROP TABLE reviews; --\nsecond line"


@pytest.fixture
def hashed(tmp_path):
    url, run_id, root = build_store(tmp_path / "a", n_classes=4, n_per_class=2, seed=5)
    add_hashes(url, run_id)
    with store.make_sessionmaker(store.make_engine(url, readonly=True))() as s:
        images = queries.images_frame(s, run_id)
        names = queries.class_names(s, run_id)
    return url, images, names


def run(*argv: str) -> int:
    return job.main(job.get_args_parser().parse_args(list(argv)))


def latest(url: str) -> list[tuple]:
    with store.make_sessionmaker(store.make_engine(url, readonly=True))() as s:
        frame = queries.latest_reviews(s)
    return [(r.sha256, r.verdict, r.new_label, r.note, r.reviewer, r.created_at.replace(microsecond=0))
            for r in frame.itertuples()]


def give(url, images, names, k, verdict, new=None, note="", reviewer="ann", t=None):
    r = images.iloc[k]
    v = rv.Verdict(r.sha256, r.split, r.relpath, names[int(r.label)], verdict, new, note, reviewer, t)
    ReviewWriter(url).save_one(v)


def test_export_then_import_gives_the_same_verdicts(hashed, tmp_path):
    url, images, names = hashed
    t = datetime(2026, 2, 3, 4, 5, 6)
    give(url, images, names, 0, rv.RELABEL, names[1], NOTE, "Zoë <i>", t)
    give(url, images, names, 1, rv.DROP, t=t)
    give(url, images, names, 1, rv.FINE, t=datetime(2026, 2, 3, 5, 0, 0))  # the latest counts
    give(url, images, names, 2, rv.AMBIGUOUS, note="could be either", t=t)
    out = tmp_path / "corrections.csv"
    assert run("export", "--out", str(out), "--db", url) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(rv.CSV_COLUMNS) and len(rows) == 3
    assert {r["verdict"] for r in rows} == {rv.RELABEL, rv.FINE, rv.AMBIGUOUS}

    # into a second store of the same images (another copy of the data): the verdicts follow the hashes
    url2 = f"sqlite:///{tmp_path / 'b.db'}"
    src = Path(url.removeprefix("sqlite:///"))
    Path(url2.removeprefix("sqlite:///")).write_bytes(src.read_bytes())
    eng = store.make_engine(url2)
    with eng.begin() as c:
        c.exec_driver_sql("DELETE FROM reviews")
    eng.dispose()
    assert run("import", str(out), "--db", url2) == 0
    assert latest(url2) == latest(url)
    # importing the same file again adds nothing
    assert run("import", str(out), "--db", url2) == 0
    with store.make_sessionmaker(store.make_engine(url2, readonly=True))() as s:
        assert len(queries.review_history(s)) == 3


def test_a_bad_file_is_rejected_whole_with_line_numbers_and_exit_2(hashed, tmp_path):
    url, images, names = hashed
    good = images.iloc[0]
    path = tmp_path / "bad.csv"
    path.write_text(
        "relpath,split,sha256,label,verdict,new_label,note,reviewer,reviewed_at\n"
        f"{good.relpath},{good.split},,,drop,,,,\n"                        # line 2: fine
        f"{good.relpath},{good.split},,,relabel,no such sport,,,\n"        # line 3: unknown class
        "valid/nowhere/001.jpg,valid,,,drop,,,,\n"                          # line 4: unknown image
        f"{good.relpath},{good.split},,,delete,,,,\n",                      # line 5: bad verdict
        encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "jobs.reviews", "import", str(path), "--db", url],
                       cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "nothing was imported" in r.stderr
    for line in (3, 4, 5):
        assert f"line {line}:" in r.stderr
    assert "line 2" not in r.stderr
    assert latest(url) == []


def test_rows_without_a_reviewer_take_the_flag(hashed, tmp_path):
    url, images, names = hashed
    r = images.iloc[3]
    path = tmp_path / "c.csv"
    path.write_text(f"split,relpath,verdict,new_label\n{r.split},{r.relpath},relabel,{names[0]}\n", encoding="utf-8")
    assert run("import", str(path), "--reviewer", "carol", "--db", url) == 0
    (row,) = latest(url)
    assert row[:5] == (r.sha256, rv.RELABEL, names[0], "", "carol")


def test_export_of_the_whole_history(hashed, tmp_path, capsys):
    url, images, names = hashed
    give(url, images, names, 0, rv.DROP, t=datetime(2026, 1, 1))
    give(url, images, names, 0, rv.FINE, t=datetime(2026, 1, 2))
    assert run("export", "--out", "-", "--history", "--db", url) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ",".join(rv.CSV_COLUMNS) and [ln.split(",")[4] for ln in lines[1:]] == ["drop", "fine"]
