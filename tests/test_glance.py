"""Figures and pages that read at a glance: one colormap with its colour bar everywhere, words instead of
column names on the trust page, tables that fit, labels that do not overlap, links that keep the run, and an
audit that lists the labels it doubts."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import cammaps, figures
from core.cammaps import DEFAULT_ALPHA, DEFAULT_COLORMAP, colorbar_strip, overlay
from core.sheets import Tile, colour_legend, draw_sheet
from dashboard import tiles
from db.builder import build_store
from jobs.auditing import SHOWN_SUSPECTS, format_summary

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A run with a data audit (planted duplicates, suspect labels) and faithfulness scores."""
    return build_store(tmp_path_factory.mktemp("scored"), n_classes=6, n_per_class=4, seed=3, audit=True, trust=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A run with neither an audit nor trust scores."""
    return build_store(tmp_path_factory.mktemp("plain"), n_classes=3, n_per_class=2, splits=("valid",))


def app(url: str, monkeypatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=90)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def colour_bars(at: AppTest) -> list[str]:
    return [c for im in at.get("image") for c in (i.caption for i in im.proto.imgs) if c.startswith("Heatmap colours")]


# --------------------------------------------------------------------------- one colormap, with its colour bar

def test_every_overlay_defaults_to_the_shared_colours():
    rgb = np.full((16, 16, 3), 120, np.uint8)
    cam = np.random.default_rng(0).random((4, 4))
    assert np.array_equal(overlay(rgb, cam), overlay(rgb, cam, colormap=DEFAULT_COLORMAP, alpha=DEFAULT_ALPHA))
    assert not np.array_equal(overlay(rgb, cam), overlay(rgb, cam, colormap="jet", alpha=0.5))
    for fn in (tiles.render_view, tiles.picture):
        params = inspect.signature(fn.__wrapped__ if hasattr(fn, "__wrapped__") else fn).parameters
        assert params["colormap"].default == DEFAULT_COLORMAP and params["alpha"].default == DEFAULT_ALPHA
    assert 0.3 <= DEFAULT_ALPHA <= 0.45, "the object under the map must stay visible"


def test_colour_bar_runs_from_the_lowest_to_the_highest_colour():
    strip = colorbar_strip(DEFAULT_COLORMAP, width=64, height=5)
    assert strip.shape == (5, 64, 3) and strip.dtype == np.uint8
    full = overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0.0, 1.0]]), alpha=1.0, normalize="none")
    assert np.array_equal(strip[0, 0], full[0, 0]) and np.array_equal(strip[0, -1], full[0, 1])
    with pytest.raises(ValueError, match="colormap must be one of"):
        colorbar_strip("rainbow-unicorn")
    with pytest.raises(ValueError, match="width >= 2"):
        colorbar_strip(width=1)


def test_exported_sheets_carry_the_colour_bar():
    strip = colorbar_strip(DEFAULT_COLORMAP)
    panel = np.full((40, 40, 3), 200, np.uint8)
    sheet_tiles = [Tile(header=["true: a"], panels=[(panel, "image"), (panel, "map")])]
    plain = np.asarray(draw_sheet("Errors", sheet_tiles, width_px=600, per_row=1, panels_per_tile=2, dpi=100))
    keyed = np.asarray(draw_sheet("Errors", sheet_tiles, width_px=600, per_row=1, panels_per_tile=2, dpi=100,
                                  legend=(strip, "low", "high")))
    assert plain.shape == keyed.shape
    top = keyed[: plain.shape[0] // 3, keyed.shape[1] // 2:]  # the right half of the title band
    mid = strip[0, strip.shape[1] // 2].astype(int)
    assert (np.abs(top.astype(int) - mid).sum(axis=-1) < 30).any(), "the bar's colours are on the sheet"
    assert not (np.abs(plain[: plain.shape[0] // 3].astype(int) - mid).sum(axis=-1) < 30).any()
    legend = colour_legend(strip, "low", "high", font_px=12, bar_px=80)
    assert legend.shape[1] > 80 and legend.dtype == np.uint8


@pytest.mark.parametrize("page", ["views/gallery.py", "views/compare.py", "views/confusion.py",
                                  "views/data_issues.py", "views/trust.py"])
def test_pages_with_heatmaps_show_their_colour_bar(scored, monkeypatch, page):
    url, _, _ = scored
    at = app(url, monkeypatch, page)
    if page == "views/data_issues.py":  # the suspects' tab holds the maps
        assert at.tabs, "the data issues page has its tabs"
    assert colour_bars(at), f"{page}: no colour bar next to its heatmaps"


def test_compare_page_starts_on_the_shared_colours_with_titles_under_images(scored, monkeypatch):
    url, _, _ = scored
    at = app(url, monkeypatch, "views/compare.py")
    assert at.selectbox(key="cmp_cmap").value == DEFAULT_COLORMAP
    assert at.slider(key="cmp_alpha").value == pytest.approx(DEFAULT_ALPHA)
    shown = 0
    for col in at.columns:
        kinds = [type(e).__name__ for e in col.children.values()]
        if "Image" in kinds and "Markdown" in kinds:
            assert kinds.index("Image") < kinds.index("Markdown"), kinds  # title below: images stay aligned
            shown += 1
    assert shown >= 2


# --------------------------------------------------------------------------- the trust page speaks words

RAW = ("del_", "ins_", "spearman_", "ssim_", "deletion_auc", "insertion_auc", "beats_random")


def test_trust_page_uses_words_not_column_names(scored, monkeypatch):
    url, _, _ = scored
    at = app(url, monkeypatch, "views/trust.py")
    for df in at.dataframe:
        cols = [str(c) for c in df.value.columns]
        assert not [c for c in cols if c.startswith(RAW)], cols
    labels = [m.label for m in at.metric]
    assert "Grad-CAM: deletion AUC" in labels and "random map: deletion AUC" in labels, labels
    assert not [m for m in labels if m.startswith(("gradcam", "random:", "centre:"))], labels
    assert any(" of " in c.value and "interval" in c.value for c in at.caption), "the share has its n and interval"
    per_class = next(df for df in at.dataframe if "class" in df.value.columns)
    widths = [v.get("width") for k, v in json.loads(per_class.proto.columns).items() if k != "_index"]
    assert all(isinstance(w, int) for w in widths if w is not None)


def test_small_curve_plots_have_a_legend_clear_of_their_labels():
    x = np.linspace(0, 1, 5)
    curves = {m: ([1, 0.5, 0.2, 0.1, 0], [0, 0.3, 0.6, 0.8, 1]) for m in ("gradcam", "random", "centre")}
    fig = figures.trust_curves(x, curves, height=240)
    names = [t.name for t in fig.data if t.showlegend]
    assert names == ["Grad-CAM", "random map", "centred map"]
    assert fig.layout.legend.yref == "container" and fig.layout.margin.t >= 60  # above the subplot titles
    assert list(fig.layout.xaxis.tickvals) == [0, 0.5, 1] and list(fig.layout.xaxis2.tickvals) == [0, 0.5, 1]
    gap = fig.layout.xaxis2.domain[0] - fig.layout.xaxis.domain[1]
    assert gap >= 0.15, "the two panels' tick labels must not run into each other"


# --------------------------------------------------------------------------- tables that fit, labels apart

def test_most_confused_pairs_table_fits_half_a_1400_px_page(scored, monkeypatch):
    url, _, _ = scored
    at = app(url, monkeypatch, "views/confusion.py")
    table = next(df for df in at.dataframe if "predicted" in df.value.columns)
    cols = json.loads(table.proto.columns)
    widths = [cols[c]["width"] for c in table.value.columns]
    # At 1400 px the main area is about 920 px (measured in Chromium); the table's column takes 1.4/2.4 of it.
    assert sum(widths) <= 1.4 / 2.4 * 900, widths
    assert cols["count"]["label"] == "images"


def test_twenty_class_matrix_labels_stand_upright():
    cm = np.random.default_rng(0).integers(0, 4, (20, 20))
    names = [f"a rather long sport name {i}" for i in range(20)]
    fig = figures.confusion_heatmap(cm, names, hide_diagonal=True)
    assert fig.layout.xaxis.tickangle == -90
    assert fig.data[0].colorbar.tickformat == "d" and float(fig.data[0].colorbar.dtick).is_integer()
    assert figures.confusion_heatmap(cm[:6, :6], names[:6]).layout.xaxis.tickangle == 0


def test_exported_training_curves_start_at_epoch_zero():
    from core.report_parts import ExportOptions
    from core.report_sections import training_section

    epochs = pd.DataFrame({"phase": [1, 2, 2], "epoch": [1, 1, 2], "global_epoch": [1, 2, 3],
                           "train_loss": [1.0, 0.8, 0.6], "train_acc": [0.3, 0.5, 0.6], "val_loss": [1.1, 0.9, 0.7],
                           "val_acc": [0.3, 0.4, 0.5], "lr": [1e-3, 1e-4, 1e-5], "seconds": [1.0, 1.0, 1.0]})

    class Data:
        pass

    data = Data()
    data.epochs = epochs
    (plot,) = list(training_section(data, ExportOptions()))
    assert plot.fig.layout.xaxis.range[0] == 0 and plot.fig.layout.xaxis2.range[0] == 0


# --------------------------------------------------------------------------- links keep the run

@pytest.mark.parametrize("page", ["views/data_issues.py", "views/trust.py"])
def test_pages_that_stop_early_still_put_the_run_in_the_link(plain, monkeypatch, page):
    url, run_id, _ = plain
    at = app(url, monkeypatch, page)
    assert at.info, "the page explains what is missing"
    assert at.query_params.get("run") in (str(run_id), [str(run_id)])


# --------------------------------------------------------------------------- the audit lists its suspects

def test_audit_summary_lists_the_suspect_labels_it_counts():
    suspects = [{"split": "valid", "relpath": f"valid/b/{k:02d}.jpg", "label": 1, "pred_label": 0,
                 "given_prob": 0.01 * k, "pred_prob": 0.9 - 0.01 * k} for k in range(SHOWN_SUSPECTS + 5)]
    report = {"stats": {"n_images": 50, "n_readable": 50, "hash_seconds": 0.1, "search_seconds": 0.1,
                        "thresholds": {"min_score": 0.9, "min_detail": 0.5, "calibrated": False}},
              "groups": [], "leakage": [], "conflicts": [], "suspects": suspects, "class_names": ["alpha", "beta"]}
    text = format_summary(7, report, [], "runs/mine.db")
    assert f"suspect labels: {len(suspects)}" in text
    assert (f"({SHOWN_SUSPECTS} of {len(suspects)}; all of them: python -m jobs.audit --run 7 --json "
            "--db runs/mine.db") in text
    listed = [line for line in text.splitlines() if line.startswith("  valid valid/b/")]
    assert len(listed) == SHOWN_SUSPECTS
    assert listed[0] == "  valid valid/b/00.jpg: labelled beta (0%), the model says alpha (90%)"
    assert "near duplicates: score >= 0.900, detail >= 0.50 (as given)" in text


def test_the_default_colormap_is_one_opencv_knows():
    assert DEFAULT_COLORMAP in cammaps.COLORMAPS
