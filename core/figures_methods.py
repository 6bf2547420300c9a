"""The figure of the CAM-method ranking (``core.method_rank``): one bar per map scored, best first.

Pure: a ranking table in, a plotly figure out; the trust page draws it through ``dashboard.charts.chart`` and
the report export writes it.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from core.figures import METHOD_COLORS, _empty_figure
from core.method_rank import SCORE


def method_ranking_figure(table: pd.DataFrame) -> go.Figure:
    """Horizontal bars of the mean score (insertion AUC - deletion AUC) of each CAM method, the winner on
    top, and of the baselines below them in their own colours; the hover holds both AUCs and the share of
    images where the map beats the random one."""
    if table is None or table.empty:
        return _empty_figure("no methods scored")
    rows = table.iloc[::-1]  # plotly draws the first bar at the bottom
    hover = []
    for r in rows.itertuples():
        extra = ""
        if pd.notna(r.beats_random):
            extra = (f"<br>beats the random map on {r.beats_random:.0%} of images "
                     f"({r.beats_random_lo:.0%}-{r.beats_random_hi:.0%})")
        hover.append(f"{r.name}: score {getattr(r, SCORE):.3f}<br>deletion AUC {r.deletion_auc:.3f}, insertion "
                     f"AUC {r.insertion_auc:.3f}, {r.images} images{extra}")
    labels = [f"{int(r.rank)}. {r.name}" if pd.notna(r.rank) else f"{r.name} (baseline)" for r in rows.itertuples()]
    fig = go.Figure(go.Bar(
        x=rows[SCORE], y=labels, orientation="h", text=[f"{v:.3f}" for v in rows[SCORE]], textposition="auto",
        marker_color=[METHOD_COLORS.get(m, "#333333") for m in rows["method"]], hovertext=hover,
        hoverinfo="text",
    ))
    fig.update_layout(
        height=80 + 34 * len(rows), margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
        xaxis=dict(title="insertion AUC - deletion AUC (higher is more faithful)", zeroline=True),
    )
    return fig
