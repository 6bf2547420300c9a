"""A new user's mistakes, each answered in one line before work is lost: a store that cannot be written or
read, a split with no readable image, what ``latest`` means, hints that work when copied, a fast --help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import queries, store, storecheck
from db.builder import build_empty_store, build_store
from db.models import Run
from jobs import audit as audit_job
from jobs import runs as runs_job
from jobs import train as train_job
from jobs.common import run_cli
from tests.conftest import make_dataset

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "dashboard" / "Home.py"
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py")
              if "def get_args_parser" in p.read_text(encoding="utf-8"))
TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "4",
        "--workers", "0", "--weights", "none", "--device", "cpu"]


def one_error_line(err: str, logged: bool = False) -> str:
    """The error line, the only one (``logged``: after the job's own progress lines) and no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if logged:
        assert all(" INFO " in line or " WARNING " in line for line in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- --help

def test_every_job_answers_help_without_importing_torch():
    """One interpreter runs each job's ``--help`` as ``python -m`` would and notes who loaded torch first."""
    assert {"train", "runs", "cams", "audit", "trust", "export", "upgrade", "cache"} <= set(JOBS)
    code = (
        "import contextlib, io, json, runpy, sys\n"
        f"jobs = {JOBS!r}\n"
        "found = {}\n"
        "for job in jobs:\n"
        "    sys.argv = ['python -m jobs.' + job, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_module('jobs.' + job, run_name='__main__', alter_sys=True)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    found[job] = {'torch': 'torch' in sys.modules, 'help': out.getvalue()}\n"
        "print(json.dumps(found))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert [j for j in JOBS if found[j]["torch"]] == [], "these jobs import torch before --help answers"
    for job in JOBS:
        assert found[job]["help"].startswith(f"usage: python -m jobs.{job}"), (job, found[job]["help"][:200])


@pytest.mark.parametrize("job", JOBS)
def test_help_states_each_default_once(job):
    import importlib

    parser = importlib.import_module(f"jobs.{job}").get_args_parser()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = " ".join(parser._get_formatter()._format_action(action).split())
        assert "(default: None)" not in text and text.count("(default") <= 1, (job, text)


# --------------------------------------------------------------------------- a store that cannot be written

def test_db_below_a_file_fails_before_anything_runs(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_split={"train": 1, "valid": 1})
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    db = blocker / "sub" / "store.db"
    argv = ["--data", str(data), "--db", str(db), "--out", str(tmp_path / "ck"), *TINY]
    assert run_cli(train_job.main, train_job.get_args_parser(), argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(db) in line and f"{blocker} is a file, not a folder" in line
    assert not (tmp_path / "ck").exists(), "nothing may run before the store is checked"


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in. Root ignores permission bits, so as root this is a
    sysfs folder (the kernel refuses new files there whoever asks); otherwise a folder made read-only."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    for folder in (Path("/sys"), Path("/proc/self")):
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError:
            return folder
    pytest.skip("running as root with no folder that refuses new files")


def test_db_in_a_folder_that_takes_no_files_fails_at_once(tmp_path, capsys):
    folder = _unwritable_folder(tmp_path)
    db = folder / "store.db"
    argv = ["--data", str(tmp_path / "nowhere"), "--db", str(db), *TINY]
    assert run_cli(train_job.main, train_job.get_args_parser(), argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(db) in line and f"the folder {folder} does not take new files" in line
    assert not db.exists()


def test_writer_jobs_check_the_store_too(tmp_path):
    db = tmp_path / "folder.db"
    db.mkdir()
    with pytest.raises(store.StoreError, match="it is a folder, not a SQLite file"):
        store.make_engine(str(db))
    with pytest.raises(store.StoreError, match="is a folder, not a SQLite file"):
        store.make_engine(str(db), create=False)


# --------------------------------------------------------------------------- a store that cannot be read

@pytest.mark.parametrize("case, expected", [
    ("folder", "is a folder, not a SQLite file"),
    ("text", "is not a SQLite file"),
    ("below_file", "is a file, not a folder"),
    ("missing", "does not exist; run 'python -m jobs.train --db "),
])
def test_runs_says_what_is_wrong_with_the_path(tmp_path, capsys, case, expected):
    target = {"folder": tmp_path / "a_folder", "text": tmp_path / "notes.txt",
              "below_file": tmp_path / "notes.txt" / "store.db", "missing": tmp_path / "missing.db"}[case]
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a database\n" * 20)
    assert run_cli(runs_job.main, runs_job.get_args_parser(), ["--db", str(target)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line and "does not exist" not in line.replace(expected, "") and str(target) in line
    if case == "missing":
        assert f"--db {target}'" in line  # the hint names this store, so it works when copied


def test_empty_store_hint_names_the_store(tmp_path, capsys):
    db = tmp_path / "s.db"
    store.make_engine(str(db)).dispose()
    assert run_cli(runs_job.main, runs_job.get_args_parser(), ["--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs in the store; create one with: python -m jobs.train --db {db}"


# --------------------------------------------------------------------------- a split with no readable image

def test_unreadable_training_split_is_one_line_naming_split_count_and_reasons(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_split={"train": 2, "valid": 1})
    bad = sorted((data / "train").rglob("*.jpg"))
    for p in bad:
        p.write_bytes(b"these bytes are no image")
    db = tmp_path / "s.db"
    argv = ["--data", str(data), "--db", str(db), "--out", str(tmp_path / "ck"), *TINY]
    assert run_cli(train_job.main, train_job.get_args_parser(), argv) == 2
    line = one_error_line(capsys.readouterr().err, logged=True)
    assert f"split 'train': all {len(bad)} images are unreadable" in line
    assert f"python -m jobs.runs --skipped 1 --db {db}" in line
    S = store.make_sessionmaker(store.make_engine(str(db), readonly=True))
    with S() as s:
        run = s.get(Run, 1)
        assert run.status == "failed" and "split 'train'" in run.error
        assert queries.epochs_frame(s, 1).empty, "no epoch may run on a split without images"
    # ... and the command the line names lists each file with its reason.
    assert run_cli(runs_job.main, runs_job.get_args_parser(), ["--skipped", "1", "--db", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"#1 {run.name}: {len(bad)} of {len(bad) + 3} files could not be read")
    assert len(out) == 1 + len(bad) and all("cannot read image header" in o for o in out[1:])


# --------------------------------------------------------------------------- latest

@pytest.fixture
def four_runs(tmp_path):
    """#1 complete, #2 failed, #3 a complete phase-1 snapshot of #4, #4 running."""
    url, first, _ = build_store(tmp_path, n_classes=3, n_per_class=2, splits=("valid",))
    S = store.make_sessionmaker(store.make_engine(url))
    with S.begin() as s:
        for name, status, stage in (("broken", "failed", None), ("snap", "complete", "phase1"),
                                    ("training", "running", None)):
            run = store.create_run(s, name=name, config={}, data_root="/nowhere", device="cpu", weights="none",
                                   image_size=32, cam_layer="features.35", class_names=["a", "b", "c"],
                                   absent_splits={})
            if status != "running":
                store.finish_run(s, run.id, status)
            run.stage = stage
    with S.begin() as s:
        s.get(Run, 3).parent_id = 4
    return url, first


def test_latest_is_the_newest_complete_run_everywhere(four_runs):
    url, first = four_runs
    S = store.make_sessionmaker(store.make_engine(url, readonly=True))
    with S() as s:
        assert queries.find_run(s, "latest").id == first
        assert queries.default_run_id(s) == first


def test_latest_without_a_complete_run_says_which_runs_there_are(tmp_path):
    url = build_empty_store(tmp_path)
    S = store.make_sessionmaker(store.make_engine(url))
    with S() as s:
        with pytest.raises(store.StoreError, match="no run in the store for 'latest'"):
            queries.find_run(s, "latest")
    with S.begin() as s:
        store.create_run(s, name="first", config={}, data_root="/x", device="cpu", weights="none", image_size=32,
                         cam_layer="features.35", class_names=["a"], absent_splits={})
    with S() as s:
        with pytest.raises(store.StoreError, match=r"the newest, #1 first, is running\); give --run 1"):
            queries.find_run(s, "latest")
        assert queries.default_run_id(s) == 1, "the dashboard opens on a first run while it trains"


def test_the_cli_says_which_run_latest_picked(four_runs, capsys):
    url, first = four_runs
    assert run_cli(audit_job.main, audit_job.get_args_parser(), ["--db", url, "--run", "latest"]) == 0
    picked = [line.split(" jobs: ", 1)[1] for line in capsys.readouterr().err.splitlines() if " jobs: " in line]
    assert picked == [f"run #{first} synthetic [complete] (latest: the newest complete run)"]


# --------------------------------------------------------------------------- hints in the dashboard

def app(url: str, monkeypatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=60)
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def test_dashboard_hints_name_the_store(tmp_path, monkeypatch):
    missing = tmp_path / "runs" / "missing.db"
    at = app(f"sqlite:///{missing}", monkeypatch)
    assert not at.exception
    assert any(f"`python -m jobs.train --db {missing}`" in i.value or f"'python -m jobs.train --db {missing}'"
               in i.value for i in at.info), [i.value for i in at.info]
    empty = build_empty_store(tmp_path / "e")
    at = app(empty, monkeypatch)
    path = storecheck.sqlite_path(empty)
    assert any(f"python -m jobs.train --db {path}" in i.value for i in at.info), [i.value for i in at.info]


def test_dashboard_names_what_is_wrong_with_a_folder(tmp_path, monkeypatch):
    at = app(f"sqlite:///{tmp_path}", monkeypatch)
    assert not at.exception
    assert [e.value for e in at.error] == [f"Cannot read the store: store {tmp_path} is a folder, not a SQLite file"]


def test_a_failed_run_is_told_how_to_resume_not_to_train_the_demo(tmp_path, monkeypatch):
    url = build_empty_store(tmp_path)
    S = store.make_sessionmaker(store.make_engine(url))
    with S.begin() as s:
        run = store.create_run(s, name="mine", config={"run_dir": str(tmp_path / "ck" / "mine")}, data_root="/x",
                               device="cpu", weights="none", image_size=32, cam_layer="features.35",
                               class_names=["a", "b"], absent_splits={})
        store.finish_run(s, run.id, "failed", error="KeyboardInterrupt: ")
    path = storecheck.sqlite_path(url)
    for page in ("views/overview.py", "views/gallery.py"):
        at = app(url, monkeypatch, page)
        assert not at.exception, [e.value for e in at.exception]
        text = " ".join(i.value for i in at.info)
        assert f"`python -m jobs.train --resume {tmp_path / 'ck' / 'mine'}/last.pt --db {path}`" in text, text
        assert "demo" not in text


def test_audit_and_trust_hints_carry_the_store(tmp_path, monkeypatch):
    url, run_id, _ = build_store(tmp_path, n_classes=3, n_per_class=2, splits=("valid",))
    path = storecheck.sqlite_path(url)
    at = app(url, monkeypatch, "views/data_issues.py")
    assert any(f"`python -m jobs.audit --run {run_id} --db {path}`" in i.value for i in at.info)
    at = app(url, monkeypatch, "views/trust.py")
    assert any(f"`python -m jobs.trust --run {run_id} --db {path}`" in i.value for i in at.info)
