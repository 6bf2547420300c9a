"""Progress output: a bar on a terminal, a few log lines elsewhere (a log file must not fill with bars)."""
from __future__ import annotations

import io
import logging
import sys

import torch

from core.data import ImageDataset, collate, discover
from core.dist import DistEnv
from core.engine import Skipped, evaluate
from core.model import SportsVGG
from core.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, n: int = 50, **kwargs) -> list[int]:
    return list(progress(range(n), "pass", stream=stream, **kwargs))


def test_a_log_file_gets_no_bar_and_no_line_for_a_short_pass(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="core.progress"):
        assert run(stream) == list(range(50))
    assert stream.getvalue() == "" and caplog.records == []


def test_a_log_file_gets_one_whole_line_per_heartbeat(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="core.progress"):
        assert run(stream, 7, heartbeat_s=0.0) == list(range(7))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"pass: {i}/7 batches, 0 s" for i in range(1, 8)]
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar():
    stream = Terminal()
    assert run(stream) == list(range(50))
    assert "\r" in stream.getvalue() and "pass" in stream.getvalue()


def test_other_ranks_show_nothing(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="core.progress"):
        assert run(stream, show=False, heartbeat_s=0.0) == list(range(50))
    assert stream.getvalue() == "" and caplog.records == []


def test_a_job_pass_writes_nothing_to_a_redirected_stderr(dataset, monkeypatch):
    """The validation pass of a training epoch, with stderr a file as under nohup or CI."""
    idx = discover(dataset)
    ds = ImageDataset(dataset, idx.splits["valid"], 32, train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    torch.manual_seed(0)
    out = evaluate(SportsVGG(3), loader, torch.device("cpu"), amp=False, env=DistEnv(), skipped=Skipped())
    assert out["images"] == 6 and err.getvalue() == ""
