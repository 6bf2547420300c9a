"""Every chart a page draws comes with its downloads: interactive HTML and a report SVG."""
from __future__ import annotations

import shutil

import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import charts


def _app():
    import plotly.graph_objects as go

    from dashboard.charts import chart

    chart(go.Figure(go.Bar(x=["a", "b"], y=[1, 2])), key="c1", name="Two bars / test")


def test_a_chart_has_its_downloads():
    at = AppTest.from_function(_app).run(timeout=60)
    assert not at.exception
    buttons = at.get("download_button")
    labels = sorted(b.proto.label for b in buttons)
    expected = ["HTML", "SVG"] if charts.find_browser("auto") else ["HTML"]
    assert labels == expected


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_svg_is_the_figure_on_white():
    fig = go.Figure(go.Bar(x=["alpha", "beta"], y=[3, 5]))
    svg = charts._svg(fig, "A title").decode()
    assert svg.lstrip().startswith("<svg") and "alpha" in svg and "A title" in svg
