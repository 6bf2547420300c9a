"""A confusion matrix that reads at 1,000 classes: class orders, views of it, and a raster figure.

``core.figures.confusion_heatmap`` sends every cell as JSON with its own hover data and grows 12 px a class,
right at 100 classes and about 11,000 px tall at 1,000. Here the cells travel as one PNG (a ``go.Image``, one
pixel a cell, drawn pixelated when zoomed) and the hover comes from an invisible heatmap whose only payload is
the counts as a typed array of the smallest unsigned type that holds them (1 or 2 bytes a cell); the class
names come from the axes (tick texts, or label aliases of plotly's own ticks above 100 classes), which the
hover reads too. The figure keeps a fixed height whatever the number of classes: 1.5 MB of JSON and 900 px
at 1,000 classes against 16.5 MB and 12,220 px for the heatmap (``python -m bench.confusion``).

The pieces: ``order_classes`` (alphabetical, clustered so that confusions form blocks, or by groups the user
gives), ``confusion_view`` (a permuted, optionally restricted matrix with its names), ``top_confused_view``
and ``search_view`` (the worst classes, or the classes a search finds and those they are confused with),
``confusion_raster`` (the pixels) and ``raster_figure`` (the plotly figure).
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from core.figures import most_confused_classes

# Optimal leaf ordering costs about n^3: measured 0.4 s at 500 classes and 1 to 4 s at 1,000 (by the matrix)
# on a busy core, against 0.04 s for the linkage itself. Above this many classes the plain leaf order is used.
OPTIMAL_LEAF_LIMIT = 500
UNGROUPED = "(ungrouped)"
HEIGHT = 900
LABEL_WIDTH = 24
ALL_LABELS_UP_TO = 100  # up to this many classes every name is on the axes; above it plotly thins them by zoom
# Zero stays white and the first non-zero value is already visible: single mistakes matter here.
COLORSCALE = ((0.0, "#ffffff"), (1e-6, "#c6dbef"), (0.5, "#4292c6"), (1.0, "#08306b"))
DIAGONAL_COLOR = "#ececec"  # the diagonal when hidden: a guide for the eye, not a value
GroupSpec = Union[Mapping[str, str], Sequence[str]]


# --------------------------------------------------------------------------- class orders

@dataclass(frozen=True)
class ClassOrder:
    """Classes in display order. ``method`` says how they were ordered (``alphabetical``, ``optimal leaf
    order``, ``leaf order`` when a block was above ``OPTIMAL_LEAF_LIMIT``); ``groups`` holds (name, start,
    stop) display positions of each group when a hierarchy was given."""

    perm: np.ndarray
    method: str
    groups: tuple[tuple[str, int, int], ...] = ()


def check_confusion(cm, names: Sequence[str]) -> np.ndarray:
    """``cm`` as an int64 (n, n) array of counts for ``len(names)`` classes, or ValueError."""
    a = np.asarray(cm)
    n = len(names)
    if a.ndim != 2 or a.shape != (n, n):
        raise ValueError(f"confusion matrix must be ({n}, {n}) for {n} class names, got shape {a.shape}")
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or not np.all(a == np.round(a))):
        raise ValueError("confusion matrix must hold non-negative whole counts")
    return a.astype(np.int64)


def _similarity(cm: np.ndarray) -> np.ndarray:
    """Symmetric share of mistakes between two classes: the mean of the two row-normalised off-diagonal rates."""
    c = cm.astype(np.float64)
    rates = c / np.maximum(c.sum(axis=1, keepdims=True), 1.0)
    np.fill_diagonal(rates, 0.0)
    return (rates + rates.T) / 2.0


def _by_name(idx: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.array(sorted(idx.tolist(), key=lambda i: (names[i].lower(), i)), dtype=np.int64)


def _cluster(idx: np.ndarray, sim: np.ndarray, names: Sequence[str], limit: int) -> tuple[np.ndarray, str]:
    """``idx`` ordered by average-linkage clustering of ``1 - sim / max(sim)``; classes with no mistake with
    another class of ``idx`` come last, by name (clustering would leave them in an arbitrary order)."""
    sub = sim[np.ix_(idx, idx)]
    involved = sub.any(axis=1)
    lone = _by_name(idx[~involved], names)
    k = int(involved.sum())
    if k < 3:
        return np.concatenate([_by_name(idx[involved], names), lone]), "optimal leaf order"
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    s = sub[np.ix_(involved, involved)]
    dist = 1.0 - s / s.max()
    np.fill_diagonal(dist, 0.0)
    condensed = squareform(dist, checks=False)
    z = linkage(condensed, method="average")
    if k <= limit:
        leaves, method = leaves_list(optimal_leaf_ordering(z, condensed)), "optimal leaf order"
    else:
        leaves, method = leaves_list(z), "leaf order"
    return np.concatenate([idx[involved][leaves], lone]), method


def _groups_per_class(groups: GroupSpec, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the group of each class, the groups in display order): the order they first appear in ``groups``,
    then ``UNGROUPED`` for the classes a mapping leaves out."""
    n = len(names)
    if isinstance(groups, Mapping):
        pos = {name: i for i, name in enumerate(names)}
        unknown = [k for k in groups if k not in pos]
        if unknown:
            raise ValueError(f"groups name {len(unknown)} classes that are not in the run, e.g. {unknown[:5]}")
        of = [UNGROUPED] * n
        for name, group in groups.items():
            of[pos[name]] = str(group)
        first = [str(g) for g in groups.values()] + [UNGROUPED]
    elif isinstance(groups, str) or len(groups) != n:
        raise ValueError(f"groups must map class name -> group or list one group per class ({n}), got {groups!r:.80}")
    else:
        of = [str(g) for g in groups]
        first = of
    present = set(of)
    return of, [g for g in dict.fromkeys(first) if g in present]


def _arrange(c: np.ndarray, names: Sequence[str], order: str, of: Optional[list[str]], group_order: Sequence[str],
             limit: int) -> ClassOrder:
    if order not in ("alphabetical", "confusion"):
        raise ValueError(f"order must be 'alphabetical' or 'confusion', got {order!r}")
    sim = _similarity(c) if order == "confusion" else None

    def arrange(idx: np.ndarray) -> tuple[np.ndarray, str]:
        return (_by_name(idx, names), "alphabetical") if sim is None else _cluster(idx, sim, names, limit)

    everyone = np.arange(len(names), dtype=np.int64)
    if of is None:
        perm, method = arrange(everyone)
        return ClassOrder(perm, method)
    member = np.array(of, dtype=object)
    parts, spans, methods, start = [], [], [], 0
    for g in group_order:
        part, m = arrange(everyone[member == g])
        if part.size:
            parts.append(part)
            methods.append(m)
            spans.append((g, start, start + part.size))
            start += part.size
    # "leaf order" wins: it says that some group was too large for the optimal order.
    method = "leaf order" if "leaf order" in methods else methods[0] if methods else order
    return ClassOrder(np.concatenate(parts) if parts else everyone, method, tuple(spans))


def order_classes(cm, names: Sequence[str], order: str = "confusion", *, groups: Optional[GroupSpec] = None,
                  optimal_limit: int = OPTIMAL_LEAF_LIMIT) -> ClassOrder:
    """Classes in display order: ``alphabetical``, or ``confusion`` so that mutually confused classes sit
    next to each other (clustering of the row-normalised matrix, as ``core.figures.confusion_order`` does,
    with the optimal leaf order up to ``optimal_limit`` classes and the plain leaf order above).

    ``groups`` (class name -> group name, or one group name per class) keeps each group contiguous, groups
    in the order they first appear, classes ordered by ``order`` within their group; classes a mapping
    leaves out form a last group named ``UNGROUPED``.
    """
    c = check_confusion(cm, names)
    of, group_order = _groups_per_class(groups, names) if groups is not None else (None, ())
    return _arrange(c, names, order, of, group_order, optimal_limit)


# --------------------------------------------------------------------------- views and search

@dataclass(frozen=True)
class ConfusionView:
    """A confusion matrix ready to draw: ``counts[r, c]`` images of class ``classes[r]`` predicted as
    ``classes[c]`` (original indices), ``names`` the full class names and ``labels`` the unique short ones on
    the axes, both in display order."""

    counts: np.ndarray
    classes: np.ndarray
    names: tuple[str, ...]
    labels: tuple[str, ...]
    method: str
    groups: tuple[tuple[str, int, int], ...] = ()

    def cell(self, row: int, col: int) -> tuple[str, str, int]:
        """(true name, predicted name, count) of the cell at display position (row, col)."""
        k = len(self.classes)
        if not (0 <= row < k and 0 <= col < k):
            raise ValueError(f"cell ({row}, {col}) is outside the {k} x {k} view")
        return self.names[row], self.names[col], int(self.counts[row, col])


def axis_labels(names: Sequence[str], classes: Sequence[int], width: int = LABEL_WIDTH) -> tuple[str, ...]:
    """Names cut to ``width`` characters, made unique with the class index so that the axes and the hover
    tell every class apart."""
    short = [n if len(n) <= width else n[: width - 1] + "…" for n in names]
    counts: dict[str, int] = {}
    for s in short:
        counts[s] = counts.get(s, 0) + 1
    out = [s if counts[s] == 1 else f"{s} [{int(i)}]" for s, i in zip(short, classes)]
    if len(set(out)) != len(out):  # a name that already looked like "x [3]"
        out = [f"{int(i)}: {s}" for s, i in zip(short, classes)]
    return tuple(out)


def confusion_view(cm, names: Sequence[str], *, order: str = "confusion", groups: Optional[GroupSpec] = None,
                   classes: Optional[Sequence[int]] = None, optimal_limit: int = OPTIMAL_LEAF_LIMIT) -> ConfusionView:
    """The matrix of ``classes`` (all when None) in the order ``order_classes`` gives on their sub-matrix."""
    c = check_confusion(cm, names)
    n = len(names)
    sel = np.arange(n, dtype=np.int64) if classes is None else np.asarray(classes, dtype=np.int64).reshape(-1)
    if sel.size and (sel.min() < 0 or sel.max() >= n or len(np.unique(sel)) != sel.size):
        raise ValueError(f"classes must be distinct indices in [0, {n}), got {sel.tolist()[:10]}")
    sub_names = [names[i] for i in sel]
    of, group_order = _groups_per_class(groups, names) if groups is not None else (None, ())
    co = _arrange(c[np.ix_(sel, sel)], sub_names, order, None if of is None else [of[i] for i in sel], group_order,
                  optimal_limit)
    keep = sel[co.perm]
    ordered_names = tuple(names[i] for i in keep)
    return ConfusionView(c[np.ix_(keep, keep)], keep, ordered_names, axis_labels(ordered_names, keep), co.method,
                         co.groups)


def top_confused_view(cm, names: Sequence[str], n: int, **kw) -> ConfusionView:
    """The ``n`` classes with the most mistakes on them or into them (``core.figures.most_confused_classes``)."""
    return confusion_view(cm, names, classes=most_confused_classes(check_confusion(cm, names), n), **kw)


def search_classes(names: Sequence[str], query: str) -> np.ndarray:
    """Indices of the classes whose name holds ``query`` (case-insensitive, surrounding spaces ignored)."""
    q = (query or "").strip().casefold() if isinstance(query, str) else None
    if not q:
        raise ValueError(f"query must be a non-empty string, got {query!r}")
    return np.array([i for i, name in enumerate(names) if q in name.casefold()], dtype=np.int64)


def confused_with(cm, classes: Sequence[int], *, min_count: int = 1) -> np.ndarray:
    """Other classes with at least ``min_count`` mistakes from or into ``classes``, the most first."""
    c = np.asarray(cm).astype(np.int64)
    sel = np.asarray(classes, dtype=np.int64).reshape(-1)
    off = c.copy()
    np.fill_diagonal(off, 0)
    mistakes = off[sel].sum(axis=0) + off[:, sel].sum(axis=1)
    mistakes[sel] = 0
    order = np.lexsort((np.arange(len(mistakes)), -mistakes))
    return order[mistakes[order] >= max(1, min_count)].astype(np.int64)


def search_view(cm, names: Sequence[str], query: str, *, related: bool = True, min_count: int = 1,
                **kw) -> tuple[ConfusionView, np.ndarray]:
    """The classes ``query`` finds, with (``related``) the classes they are confused with; returns the view and
    the found classes' original indices, to pass to ``raster_figure(highlight=...)``."""
    found = search_classes(names, query)
    extra = confused_with(cm, found, min_count=min_count) if related and found.size else np.array([], np.int64)
    return confusion_view(cm, names, classes=np.concatenate([found, extra]), **kw), found


# --------------------------------------------------------------------------- raster and figure

def _hex(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def confusion_raster(view: ConfusionView, *, normalize: bool = False, hide_diagonal: bool = False,
                     highlight: Sequence[int] = ()) -> tuple[np.ndarray, float]:
    """The view's pixels, (k, k, 3) uint8, one pixel a cell, and the value drawn at full colour.

    Counts (or shares of the true class) go through ``COLORSCALE`` linearly up to the largest one shown; a
    hidden diagonal is drawn in ``DIAGONAL_COLOR``. With ``highlight`` (original class indices) the rows and
    columns of other classes fade to a third of their colour.
    """
    c = view.counts.astype(np.float64)
    v = c / np.maximum(c.sum(axis=1, keepdims=True), 1.0) if normalize else c
    k = len(v)
    diag = np.eye(k, dtype=bool)
    shown = v[~diag] if hide_diagonal else v
    vmax = float(shown.max()) if shown.size and shown.max() > 0 else 1.0
    t = np.clip(v / vmax, 0.0, 1.0)
    stops = np.array([s for s, _ in COLORSCALE])
    colors = np.stack([_hex(col) for _, col in COLORSCALE])
    rgb = np.stack([np.interp(t, stops, colors[:, ch]) for ch in range(3)], axis=-1)
    if hide_diagonal:
        rgb[diag] = _hex(DIAGONAL_COLOR)
    if len(highlight):
        on = np.isin(view.classes, np.asarray(highlight, dtype=np.int64))
        fade = ~(on[:, None] | on[None, :])
        rgb[fade] = 255.0 - (255.0 - rgb[fade]) / 3.0
    return np.rint(rgb).astype(np.uint8), vmax


def png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _smallest_uint(a: np.ndarray) -> np.ndarray:
    top = int(a.max()) if a.size else 0
    for t in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(t).max:
            return a.astype(t)
    return a.astype(np.float64)


def raster_figure(view: ConfusionView, *, normalize: bool = False, hide_diagonal: Optional[bool] = None,
                  highlight: Sequence[int] = (), height: int = HEIGHT, click_cells: int = 1000) -> go.Figure:
    """The view as a zoomable raster of fixed ``height`` px: a PNG for the cells, an invisible counts heatmap
    for the hover (true and predicted class, images), and the ``click_cells`` largest off-diagonal cells as
    invisible markers with ``customdata = [true_idx, pred_idx, count]`` (plotly reports clicks on markers,
    not on heatmaps or images). ``hide_diagonal`` defaults to True above 20 classes."""
    k = len(view.classes)
    if k == 0:
        fig = go.Figure()
        fig.add_annotation(text="no classes to show", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig.update_layout(height=200, xaxis=dict(visible=False), yaxis=dict(visible=False))
    if click_cells < 0:
        raise ValueError(f"click_cells must be >= 0, got {click_cells}")
    hide = k > 20 if hide_diagonal is None else bool(hide_diagonal)
    rgb, vmax = confusion_raster(view, normalize=normalize, hide_diagonal=hide, highlight=highlight)
    labels = list(view.labels)
    # Linear axes, not category ones: plotly hands a PNG straight to the browser only on linear axes (on
    # category axes it repaints it cell by cell, 2 s at 1,000 classes). The names come from the axes, for the
    # ticks and for %{x}/%{y} in the hover: every tick named up to ALL_LABELS_UP_TO classes, else plotly's own
    # ticks (thinned by zoom) renamed through ``labelalias``.
    hover = "true: %{y}<br>predicted: %{x}<br>%{z} images<extra></extra>"
    fig = go.Figure(go.Image(source=png_data_uri(rgb), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip", name="cells"))
    fig.add_trace(go.Heatmap(z=_smallest_uint(view.counts), opacity=0, showscale=False, hovertemplate=hover,
                             name="hover"))
    off = view.counts.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    if click_cells and rows.size:
        top = np.lexsort((cols, rows, -off[rows, cols]))[:click_cells]
        rows, cols = rows[top], cols[top]
        fig.add_trace(go.Scatter(
            x=cols.astype(np.int32), y=rows.astype(np.int32), mode="markers", name="pairs",
            marker=dict(size=max(4, min(18, (height - 140) // k)), color="rgba(0,0,0,0)", line=dict(width=0)),
            customdata=np.column_stack([view.classes[rows], view.classes[cols], off[rows, cols]]).astype(np.int32),
            hovertemplate="true: %{y}<br>predicted: %{x}<br>%{customdata[2]} images<extra></extra>",
            showlegend=False,
        ))
    # A colour bar for the raster: plotly draws none for an image, so an invisible marker carries it.
    fig.add_trace(go.Scatter(
        x=[0], y=[0], mode="markers", hoverinfo="skip", showlegend=False, name="scale",
        marker=dict(size=1, opacity=0, color=[0.0], cmin=0.0, cmax=vmax, showscale=True,
                    colorscale=[[s, col] for s, col in COLORSCALE],
                    colorbar=dict(title=dict(text="share of true" if normalize else "images", side="top"),
                                  orientation="h", thickness=10, len=0.35, x=1.0, xanchor="right", y=1.0,
                                  yanchor="bottom", **({} if normalize else dict(tickformat="d"))))))
    for _, start, _stop in view.groups[1:]:
        for axis in ("x", "y"):
            line = dict(x0=start - 0.5, x1=start - 0.5, y0=0, y1=1, xref="x", yref="paper") if axis == "x" else \
                dict(y0=start - 0.5, y1=start - 0.5, x0=0, x1=1, yref="y", xref="paper")
            fig.add_shape(type="line", line=dict(color="#555555", width=1), **line)
    if 1 < len(view.groups) <= 40:
        for name, start, stop in view.groups:
            fig.add_annotation(text=name, x=1.0, xref="paper", xanchor="left", y=(start + stop - 1) / 2, yref="y",
                               showarrow=False, font=dict(size=9, color="#555555"))
    font = 12 if k <= 20 else 10 if k <= 50 else 8 if k <= ALL_LABELS_UP_TO else 9
    ticks = dict(showgrid=False, zeroline=False, tickfont=dict(size=font), automargin=True, exponentformat="none")
    if k <= ALL_LABELS_UP_TO:
        ticks.update(tickmode="array", tickvals=list(range(k)), ticktext=labels)
    else:  # about one name per 18 px; half-class ticks (zoomed to a few classes) stay blank, not a position
        alias = {str(i): lab for i, lab in enumerate(labels)} | {f"{i}.5": "" for i in range(k)}
        ticks.update(nticks=max(5, (height - 140) // 18), labelalias=alias)
    fig.update_layout(
        height=height, margin=dict(l=10, r=90 if len(view.groups) > 1 else 10, t=50, b=10),
        xaxis=dict(title="predicted", range=[-0.5, k - 0.5], tickangle=-90 if k > 30 else -45 if k > 8 else 0,
                   constrain="domain", **ticks),
        yaxis=dict(title="true", range=[k - 0.5, -0.5], scaleanchor="x", constrain="domain", **ticks),
        # Markers answer the hover only when the pointer is on them; elsewhere the heatmap under them does.
        plot_bgcolor="white", hovermode="closest", hoverdistance=1, dragmode="zoom",
    )
    return fig
