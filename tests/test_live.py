"""The first useful screen: the dashboard opens on a run while it trains and shows where it stands, with
training curves that redraw themselves, and the final view once the run is complete."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.runprogress import duration, training_progress
from dashboard.progress_ui import LIVE_SECONDS, elapsed_since, refresh_seconds
from db import store
from db.builder import build_empty_store

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


def epochs(seconds: list[tuple[int, float]]) -> pd.DataFrame:
    """Epoch rows as ``epochs_frame`` returns them: (phase, seconds) per finished epoch."""
    return pd.DataFrame({"phase": [p for p, _ in seconds], "global_epoch": range(1, len(seconds) + 1),
                         "seconds": [s for _, s in seconds]})


# --------------------------------------------------------------------------- where a run stands

def test_progress_in_phase_one_cannot_cost_phase_two_yet():
    p = training_progress(epochs([]), 1, 12, elapsed_s=20)
    assert (p.phase, p.epoch, p.epochs_in_phase, p.done, p.total) == (1, 1, 1, 0, 13)
    assert p.left_s is None and "known after the first fine-tuning epoch" in p.line()


def test_progress_costs_each_phase_at_its_own_epoch_time():
    p = training_progress(epochs([(1, 10.0), (2, 40.0), (2, 44.0)]), 1, 12, elapsed_s=100)
    assert (p.phase, p.epoch, p.epochs_in_phase, p.done) == (2, 3, 12, 3)
    assert p.left_s == pytest.approx(10 * 42.0)  # 10 fine-tuning epochs left at their mean
    assert p.line() == ("phase 2 (fine-tuning), epoch 3 of 12 · 3 of 13 epochs done · 1 min 40 s elapsed · "
                        "about 7 min 00 s of training left")
    p = training_progress(epochs([(1, 5.0)]), 3, 2, elapsed_s=5)
    assert p.left_s is None  # two frozen epochs costed, the fine-tuning ones unknown


def test_progress_when_training_is_over():
    p = training_progress(epochs([(1, 5.0), (2, 9.0)]), 1, 1, elapsed_s=30)
    assert p.training_done and p.fraction == 1.0 and p.left_s == 0.0
    assert p.line().startswith("all 2 epochs done; writing the predictions and maps")
    with pytest.raises(ValueError, match="epoch counts must be 0 or more"):
        training_progress(epochs([]), -1, 2, elapsed_s=0)


def test_durations_read_as_words():
    assert [duration(s) for s in (0, 59, 95, 4000)] == ["0 s", "59 s", "1 min 35 s", "1 h 06 min"]


def test_only_a_running_run_refreshes_itself():
    assert refresh_seconds("running") == LIVE_SECONDS
    assert refresh_seconds("complete") is None and refresh_seconds("failed") is None
    assert elapsed_since("2030-01-01T10:00:00", now=pd.Timestamp("2030-01-01T10:02:05").to_pydatetime()) == 125
    assert elapsed_since(None) == 0.0


# --------------------------------------------------------------------------- the page, on a run that trains

@pytest.fixture
def training(tmp_path):
    """A store whose only run has finished its frozen epoch and one fine-tuning epoch, and goes on."""
    url = build_empty_store(tmp_path)
    S = store.make_sessionmaker(store.make_engine(url))
    with S.begin() as s:
        run = store.create_run(s, name="demo-now", config={"epochs_frozen": 1, "epochs_finetune": 12}, data_root="/x",
                               device="cpu", weights="none", image_size=48, cam_layer="features.26",
                               class_names=["a", "b"], absent_splits={})
        for g, (phase, epoch, secs) in enumerate(((1, 1, 11.0), (2, 1, 30.0)), start=1):
            store.add_epoch(s, run.id, phase=phase, epoch=epoch, global_epoch=g, train_loss=2.0 / g, train_acc=0.2 * g,
                            val_loss=2.1 / g, val_acc=0.2 * g, lr=1e-3, seconds=secs)
    return url, run.id, S


def progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def test_overview_of_a_running_run_shows_progress_and_live_curves(training, monkeypatch):
    url, run_id, S = training
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=90).run()
    assert not at.exception, [e.value for e in at.exception]
    (text,) = progress_texts(at)
    assert text.startswith("phase 2 (fine-tuning), epoch 2 of 12 · 2 of 13 epochs done")
    assert "about 5 min 30 s of training left" in text  # 11 epochs at 30 s
    assert len(at.get("plotly_chart")) == 1 and any("Refreshes every" in c.value for c in at.caption)
    assert not at.info, [i.value for i in at.info]  # no "nothing to show": the progress is the thing to show

    # Another epoch ends: the next redraw reads it.
    with S.begin() as s:
        store.add_epoch(s, run_id, phase=2, epoch=2, global_epoch=3, train_loss=0.5, train_acc=0.7, val_loss=0.6,
                        val_acc=0.65, lr=1e-4, seconds=34.0)
    at.run()
    assert progress_texts(at)[0].startswith("phase 2 (fine-tuning), epoch 3 of 12 · 3 of 13 epochs done")

    # Phase 1 has been evaluated: the page offers the snapshot, every page of it, while fine-tuning goes on.
    with S.begin() as s:
        snap = store.create_run(s, name="demo-now:phase1", config={}, data_root="/x", device="cpu", weights="none",
                                image_size=48, cam_layer="features.26", class_names=["a", "b"], absent_splits={})
        snap.parent_id, snap.stage = run_id, "phase1"
        store.finish_run(s, snap.id, "complete")
        snap_id = snap.id
    at.run()
    assert any(f"run #{snap_id} (demo-now:phase1)" in i.value for i in at.info), [i.value for i in at.info]
    at.button(key="ov_open_phase1").click().run()
    assert not at.exception and at.session_state["run"] == snap_id
    assert not progress_texts(at), "the snapshot is complete: its Overview is the final kind"
    at.session_state["run"] = run_id
    at.session_state["sb_run"] = run_id
    at.run()
    assert progress_texts(at)

    # The run completes: the page draws the finished curves, with no progress bar and no timer.
    with S.begin() as s:
        store.finish_run(s, run_id, "complete", best_epoch=3)
    at.run()
    assert not at.exception
    if progress_texts(at):  # the cached run list may lag by a few seconds: the next run is final
        at.run()
    assert progress_texts(at) == []
    assert any("epochs with the base frozen" in c.value for c in at.caption)
