"""Small pieces every figure builder shares: tick font by class count, short names, an empty figure."""
from __future__ import annotations

import plotly.graph_objects as go


def _tick_font(n: int) -> int:
    return 12 if n <= 20 else 10 if n <= 50 else 8


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _empty_figure(text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    fig.update_layout(height=200, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig
