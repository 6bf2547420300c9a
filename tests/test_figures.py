"""Figure builders read at a glance: axes start where the data does, count colour bars show whole numbers."""
import numpy as np
import pandas as pd

from core import figures


def _epochs(n1: int, n2: int) -> pd.DataFrame:
    rows = []
    for g in range(1, n1 + n2 + 1):
        phase = 1 if g <= n1 else 2
        rows.append(dict(global_epoch=g, phase=phase, epoch=g if phase == 1 else g - n1, train_loss=1.0 / g,
                         train_acc=0.5, val_loss=1.2 / g, val_acc=0.4, lr=1e-3, seconds=1.0))
    return pd.DataFrame(rows)


def test_training_curves_start_at_epoch_zero():
    fig = figures.training_curves(_epochs(1, 12))
    for axis in (fig.layout.xaxis, fig.layout.xaxis2):
        assert tuple(axis.range) == (0, 13.5)


def test_count_colour_bar_has_whole_number_ticks():
    cm = np.array([[5, 1, 0], [2, 7, 0], [0, 3, 9]])
    fig = figures.confusion_heatmap(cm, ["a", "b", "c"])
    bar = fig.data[0].colorbar
    assert bar.tickformat == "d" and float(bar.dtick).is_integer() and bar.dtick >= 1
    # shares keep plotly's own ticks
    share = figures.confusion_heatmap(cm, ["a", "b", "c"], normalize=True).data[0].colorbar
    assert share.dtick is None
