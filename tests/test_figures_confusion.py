"""The confusion matrix at 1,000 classes: raster pixels, hover names, clustered and grouped orders, search."""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import figures_confusion as fc
from core.figures import most_confused_classes


def planted(n: int = 40, seed: int = 0) -> tuple[np.ndarray, list[str], list[list[int]]]:
    """``n`` classes, 20 images each, mostly right; two blocks of classes mistaken for each other (5 and 4
    classes, indices spread out) and a few scattered single mistakes elsewhere."""
    rng = np.random.default_rng(seed)
    cm = np.zeros((n, n), dtype=np.int64)
    np.fill_diagonal(cm, 20)
    blocks = [[3, 11, 19, 27, 35], [6, 14, 30, 38]]
    for block in blocks:
        for i in block:
            for j in block:
                if i != j:
                    cm[i, j] = rng.integers(3, 7)
    for _ in range(n // 4):  # noise: single mistakes between classes outside the blocks
        i, j = rng.choice([c for c in range(n) if not any(c in b for b in blocks)], 2, replace=False)
        cm[i, j] += 1
    names = [f"Sport {c:02d}" for c in rng.permutation(n)]
    return cm, names, blocks


def random_cm(n: int, per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n), per_class)
    near = (labels // 10 * 10 + rng.integers(0, 10, labels.size)) % n
    pred = np.where(rng.random(labels.size) < 0.75, labels, near)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm, [f"class {c:04d}" for c in rng.permutation(n)]


def contiguous(positions) -> bool:
    p = sorted(int(x) for x in positions)
    return p[-1] - p[0] + 1 == len(p)


def decode(value):
    """An array as plotly's JSON carries it: a list, or a base64 typed array {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return a.reshape([int(s) for s in str(shape).split(",")]) if shape else a
    return np.asarray(value)


def trace(spec: dict, name: str) -> dict:
    return next(t for t in spec["data"] if t.get("name") == name)


def hover_names(spec: dict, axis: str, k: int) -> list[str]:
    """What the hover shows for %{x} / %{y} at each cell position, as plotly computes it from the axis: the
    tick text of an array-mode axis, else the label alias of the integer position."""
    ax = spec["layout"][f"{axis}axis"]
    if ax.get("tickmode") == "array":
        vals = [int(v) for v in decode(ax["tickvals"])]
        return [dict(zip(vals, ax["ticktext"]))[i] for i in range(k)]
    return [ax["labelalias"][str(i)] for i in range(k)]


# --------------------------------------------------------------------------- raster

def test_raster_has_one_pixel_per_cell_in_the_colour_scale():
    cm = np.array([[8, 2, 0], [0, 5, 1], [4, 0, 6]])
    view = fc.confusion_view(cm, ["a", "b", "c"], order="alphabetical")
    rgb, vmax = fc.confusion_raster(view)
    assert rgb.shape == (3, 3, 3) and rgb.dtype == np.uint8 and vmax == 8
    assert tuple(rgb[0, 2]) == (255, 255, 255)  # zero: white
    assert tuple(rgb[0, 0]) == (0x08, 0x30, 0x6B)  # the largest count: the darkest colour
    # 1 of 8: a quarter of the way from the first non-zero colour to the middle one
    light, middle = np.array([0xC6, 0xDB, 0xEF]), np.array([0x42, 0x92, 0xC6])
    assert tuple(rgb[1, 2]) == pytest.approx(tuple(light + (middle - light) * (0.125 - 1e-6) / (0.5 - 1e-6)), abs=1)
    mid = rgb[2, 0].astype(int)  # 4 of 8: the middle stop
    assert tuple(mid) == pytest.approx((0x42, 0x92, 0xC6), abs=1)


def test_hidden_diagonal_and_highlight_and_normalised_colours():
    cm = np.array([[8, 2, 0], [0, 5, 1], [4, 0, 6]])
    view = fc.confusion_view(cm, ["a", "b", "c"], order="alphabetical")
    rgb, vmax = fc.confusion_raster(view, hide_diagonal=True)
    assert vmax == 4 and all(tuple(rgb[i, i]) == (0xEC, 0xEC, 0xEC) for i in range(3))
    assert tuple(rgb[2, 0]) == (0x08, 0x30, 0x6B)  # the largest mistake is now the darkest
    lit, _ = fc.confusion_raster(view, hide_diagonal=True, highlight=[0])
    assert (lit[0] == rgb[0]).all() and (lit[:, 0] == rgb[:, 0]).all()  # row and column of "a" unchanged
    assert lit[1, 2].astype(int).sum() > rgb[1, 2].astype(int).sum()  # others fade toward white
    share, vmax = fc.confusion_raster(view, normalize=True, hide_diagonal=True)
    assert vmax == pytest.approx(0.4)  # 4 of 10 images of "c"
    assert tuple(share[2, 0]) == (0x08, 0x30, 0x6B)


def test_figure_image_is_the_raster_at_a_fixed_height():
    cm, names = random_cm(120)
    view = fc.confusion_view(cm, names)
    fig = fc.raster_figure(view, hide_diagonal=False)
    src = fig.data[0].source
    assert fig.data[0].type == "image" and src.startswith("data:image/png;base64,")
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
    rgb, _ = fc.confusion_raster(view, hide_diagonal=False)
    assert png.shape == (120, 120, 3) and (png == rgb).all()
    assert fig.layout.height == fc.HEIGHT
    assert fig.layout.xaxis.type is None and fig.layout.yaxis.range == (119.5, -0.5)  # linear, row 0 on top


# --------------------------------------------------------------------------- hover

@pytest.mark.parametrize("n", [12, 150])  # every tick named / plotly's ticks renamed by alias
def test_hover_names_and_counts_of_chosen_cells(n):
    cm, names = random_cm(n, seed=n)
    view = fc.confusion_view(cm, names)
    spec = json.loads(fc.raster_figure(view).to_json())
    heat = trace(spec, "hover")
    z = decode(heat["z"])
    assert z.shape == (n, n) and z.dtype == np.uint8 and heat["opacity"] == 0
    assert "%{x}" in heat["hovertemplate"] and "%{z}" in heat["hovertemplate"]
    xs, ys = hover_names(spec, "x", n), hover_names(spec, "y", n)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    big_t, big_p = np.unravel_index(np.argmax(off), off.shape)
    pos = {int(c): r for r, c in enumerate(view.classes)}
    for t, p in [(big_t, big_p), (0, 0), (n - 1, 2), (5, n - 1)]:
        row, col = pos[int(t)], pos[int(p)]
        assert (ys[row], xs[col], int(z[row, col])) == (names[t], names[p], cm[t, p])
        assert view.cell(row, col) == (names[t], names[p], cm[t, p])


def test_click_markers_carry_the_pair_and_count():
    cm, names, _ = planted()
    view = fc.confusion_view(cm, names)
    pairs = trace(json.loads(fc.raster_figure(view, click_cells=5).to_json()), "pairs")
    x, y, custom = decode(pairs["x"]), decode(pairs["y"]), decode(pairs["customdata"])
    assert len(x) == 5
    off = cm.copy()
    np.fill_diagonal(off, 0)
    assert sorted(custom[:, 2].tolist(), reverse=True) == sorted(off.ravel().tolist(), reverse=True)[:5]
    for col, row, (t, p, count) in zip(x, y, custom):
        assert (view.classes[row], view.classes[col], cm[t, p]) == (t, p, count)
    none = fc.raster_figure(view, click_cells=0)
    assert "pairs" not in [t.name for t in none.data]


def test_long_and_repeated_names_stay_distinct_on_the_axes():
    names = ["African hunting dog, hyena dog, Cape hunting dog", "African hunting dog, hyena dog, other", "crane",
             "crane"]
    labels = fc.axis_labels(names, range(4))
    assert len(set(labels)) == 4 and all(len(x) <= fc.LABEL_WIDTH + 6 for x in labels)
    assert labels[2:] == ("crane [2]", "crane [3]")


# --------------------------------------------------------------------------- order

@pytest.mark.parametrize("limit,method", [(fc.OPTIMAL_LEAF_LIMIT, "optimal leaf order"), (5, "leaf order")])
def test_clustering_puts_planted_blocks_together(limit, method):
    cm, names, blocks = planted()
    order = fc.order_classes(cm, names, "confusion", optimal_limit=limit)
    assert order.method == method and sorted(order.perm.tolist()) == list(range(len(names)))
    where = np.argsort(order.perm)
    for block in blocks:
        assert contiguous(where[block]), (block, where[block])
    # classes without any mistake come last, by name
    lone = [i for i in range(len(names)) if cm[i].sum() == cm[i, i] and cm[:, i].sum() == cm[i, i]]
    tail = order.perm[-len(lone):].tolist()
    assert tail == sorted(lone, key=lambda i: names[i].lower())


def test_alphabetical_order_and_inputs_untouched():
    cm, names, _ = planted()
    before = cm.copy()
    order = fc.order_classes(cm, names, "alphabetical")
    assert [names[i] for i in order.perm] == sorted(names) and order.method == "alphabetical"
    fc.raster_figure(fc.confusion_view(cm, names))
    assert (cm == before).all()
    with pytest.raises(ValueError, match="order must be"):
        fc.order_classes(cm, names, "random")


def test_groups_stay_contiguous_in_the_order_given():
    cm, names, blocks = planted()
    # groups interleaved by index, so that none is contiguous to begin with; block 0 is group "b"
    groups = {names[i]: ("b" if i in blocks[0] else "c" if i % 3 == 0 else "a") for i in range(len(names))}
    first = list(dict.fromkeys(groups.values()))
    order = fc.order_classes(cm, names, groups=groups)
    assert [g for g, _, _ in order.groups] == first
    where = np.argsort(order.perm)
    for g, start, stop in order.groups:
        members = [i for i in range(len(names)) if groups[names[i]] == g]
        assert sorted(where[members].tolist()) == list(range(start, stop))
    assert contiguous(where[blocks[0]])
    # a partial mapping: the rest is a last "(ungrouped)" group; a sequence works as a mapping does
    part = fc.order_classes(cm, names, groups={names[0]: "x", names[1]: "x"})
    assert [g for g, _, _ in part.groups] == ["x", fc.UNGROUPED] and part.groups[0][1:] == (0, 2)
    seq = fc.order_classes(cm, names, groups=[groups[n] for n in names])
    assert {g: (a, b) for g, a, b in seq.groups} == {g: (a, b) for g, a, b in order.groups}


def test_group_lines_and_bad_groups():
    cm, names, _ = planted()
    groups = {n: n[-1] for n in names}  # ten groups by the last digit
    fig = fc.raster_figure(fc.confusion_view(cm, names, groups=groups))
    assert len(fig.layout.shapes) == 2 * 9 and len(fig.layout.annotations) == 10
    with pytest.raises(ValueError, match="not in the run"):
        fc.order_classes(cm, names, groups={"no such sport": "x"})
    with pytest.raises(ValueError, match="one group per class"):
        fc.order_classes(cm, names, groups=["x", "y"])


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        fc.confusion_view(np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="whole counts"):
        fc.confusion_view(np.array([[1.5, 0], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="whole counts"):
        fc.confusion_view(np.array([[1, -1], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="distinct indices"):
        fc.confusion_view(np.eye(2, dtype=int), ["a", "b"], classes=[0, 2])


# --------------------------------------------------------------------------- views and search

def test_top_confused_view_holds_the_most_confused_classes():
    cm, names, blocks = planted()
    view = fc.top_confused_view(cm, names, 9)
    assert sorted(view.classes.tolist()) == sorted(most_confused_classes(cm, 9).tolist())
    assert sorted(view.classes.tolist()) == sorted(blocks[0] + blocks[1])
    assert (view.counts == cm[np.ix_(view.classes, view.classes)]).all()
    assert fc.raster_figure(fc.top_confused_view(np.eye(3, dtype=int), ["a", "b", "c"], 5)).layout.height == 200


def test_search_finds_classes_and_what_they_are_confused_with():
    cm = np.array([[9, 3, 0, 1], [2, 8, 0, 0], [0, 0, 7, 0], [0, 0, 4, 6]])
    names = ["Ice Hockey", "Field hockey", "Rugby", "hockey? no: curling"]
    assert fc.search_classes(names, "  HOCKEY ").tolist() == [0, 1, 3]
    assert fc.search_classes(names, "polo").tolist() == []
    with pytest.raises(ValueError, match="non-empty"):
        fc.search_classes(names, "  ")
    assert fc.confused_with(cm, [2]).tolist() == [3]
    assert fc.confused_with(cm, [0]).tolist() == [1, 3]  # 5 mistakes with class 1, 1 with class 3
    assert fc.confused_with(cm, [0], min_count=2).tolist() == [1]
    view, found = fc.search_view(cm, names, "rugby")
    assert found.tolist() == [2] and sorted(view.classes.tolist()) == [2, 3]
    view, _ = fc.search_view(cm, names, "rugby", related=False)
    assert view.classes.tolist() == [2]


# --------------------------------------------------------------------------- size at 1,000 classes

def test_figure_at_1000_classes_is_small_and_fixed_height():
    cm, names = random_cm(1000, per_class=20)
    view = fc.confusion_view(cm, names)
    assert view.method == "leaf order"  # above OPTIMAL_LEAF_LIMIT
    fig = fc.raster_figure(view)
    text = fig.to_json()
    assert len(text) < 2_000_000 and fig.layout.height == fc.HEIGHT
    spec = json.loads(text)
    assert trace(spec, "hover")["z"]["dtype"] == "u1"
    cm[0, 0] = 300  # counts above 255 need two bytes a cell, still under 3.5 MB
    big = fc.raster_figure(fc.confusion_view(cm, names, order="alphabetical")).to_json()
    assert json.loads(big)["data"][1]["z"]["dtype"] == "u2" and len(big) < 3_500_000


# --------------------------------------------------------------------------- in a browser

@pytest.mark.browser
def test_hover_in_chromium_names_the_cell(tmp_path):
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not chromium.exists():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("browser test cannot run under CI: playwright or chromium missing")
        pytest.skip("playwright or chromium missing")
    import plotly

    cm, names = random_cm(150, seed=7)
    view = fc.confusion_view(cm, names)
    fig = fc.raster_figure(view, click_cells=200)
    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    page_file = tmp_path / "cm.html"
    page_file.write_text(f"<html><head><script src='{js.as_uri()}'></script></head><body style='margin:0'>"
                         f"<div id='g' style='width:1200px'></div><script>var f = {fig.to_json()};"
                         "Plotly.newPlot('g', f.data, f.layout).then(() => { window.done = true; });</script>"
                         "</body></html>")
    off = view.counts.copy()
    np.fill_diagonal(off, 0)
    cells = [tuple(int(v) for v in np.unravel_index(np.argmax(off), off.shape)), (3, 140), (75, 75)]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1250, "height": 1000})
            page.goto(page_file.as_uri())
            page.wait_for_function("window.done === true", timeout=60_000)
            for row, col in cells:
                x, y = page.evaluate(
                    "([r, c]) => { const gd = document.getElementById('g'), xa = gd._fullLayout.xaxis,"
                    " ya = gd._fullLayout.yaxis; return [xa._offset + xa.c2p(c), ya._offset + ya.c2p(r)]; }",
                    [row, col])
                page.mouse.move(x, y)
                page.wait_for_timeout(200)
                shown = page.evaluate("document.querySelector('.hoverlayer').textContent")
                true, pred, count = view.cell(row, col)
                assert shown == f"true: {true}predicted: {pred}{count} images"
        finally:
            browser.close()
