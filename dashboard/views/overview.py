"""Overview: headline metrics per split, training curves of both phases, and the run's configuration."""
import pandas as pd
import streamlit as st

from core.counts import binned_confidence_histogram
from core.figures import confidence_histogram, training_curves
from core.intervals import rate
from core.splits import SPLITS
from dashboard import calibration_ui, intervals_ui, loaders, progress_ui, scale_ui, state
from dashboard.context import no_results_message, require_run
from dashboard.charts import chart

st.title("Overview")
ctx = require_run()
info = ctx.info
state.publish(run=ctx.run_id)
st.caption(
    f"Run #{info.id} **{info.name}** · {info.status} · {len(info.classes)} classes · image size "
    f"{info.image_size}px · device {info.device} · weights {info.weights}"
    + (f" · finished {info.finished_at}" if info.finished_at else "")
)

# Counts per split from the store (GROUP BY split), not the run's predictions: the page costs the same at 1.3M.
counted = scale_ui.load_split_counts(ctx.url, ctx.run_id, ctx.stamp).set_index("split")
evals = loaders.load_evaluations(ctx.url, ctx.run_id, ctx.stamp).set_index("split")
splits = [s for s in SPLITS if s in counted.index or s in evals.index or s in info.metrics]
if not splits and info.status != "running":  # a running run shows its progress below
    st.info(no_results_message(ctx))
for split in splits:
    n_sp = int(counted.loc[split, "predictions"]) if split in counted.index else 0
    m = info.metrics.get(split, {}) if isinstance(info.metrics.get(split), dict) else {}
    ev = evals.loc[split] if split in evals.index else None
    top1 = ev["top1"] if ev is not None and pd.notna(ev["top1"]) else m.get("top1")
    top5 = ev["top5"] if ev is not None and pd.notna(ev["top5"]) else m.get("top5")
    macro = None
    if n_sp:
        _, macro = intervals_ui.load_class_intervals(ctx.url, ctx.run_id, ctx.names, (split,), ctx.stamp)
        n_err = n_sp - int(counted.loc[split, "correct"])
    else:
        n_err = None
    _, rate5 = intervals_ui.split_rates(pd.DataFrame(columns=["label", "pred"]), ev)
    rate1 = rate(n_sp - n_err, n_sp) if n_sp else None
    st.subheader(f"{split} split" + (f" · {n_sp} images" if n_sp else ""))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Top-1 accuracy", f"{top1:.1%}" if top1 is not None else "–", border=True)
    c2.metric("Top-5 accuracy", f"{top5:.1%}" if top5 is not None else "–", border=True)
    c3.metric("Macro F1", f"{macro['value']:.3f}" if macro is not None else "–", border=True,
              help="Mean F1 over the classes with images in the split")
    c4.metric("Errors", f"{n_err:,}" if n_err is not None else "–", border=True)
    for col, r in ((c1, rate1), (c2, rate5)):
        if r is not None:
            col.caption(r.brief())
    if macro is not None:
        c3.caption(intervals_ui.macro_caption(macro))
    if n_err is not None:
        c4.caption(f"of {n_sp:,} images")
for split, reason in info.absent_splits.items():
    st.caption(f"No {split} split: {reason}")

st.subheader("Training curves")


def finished_curves() -> None:
    epochs = loaders.load_epochs(ctx.url, ctx.run_id, ctx.stamp)
    if epochs.empty:
        st.info("No epochs recorded for this run.")
        return
    chart(training_curves(epochs), key="ov_curves", name="training-curves")
    best = info.best_epoch
    st.caption(
        f"{int((epochs['phase'] == 1).sum())} epochs with the base frozen, then "
        f"{int((epochs['phase'] == 2).sum())} fine-tuning all layers"
        + (f"; best epoch {best}" if best else "")
        + f"; {epochs['seconds'].sum():.0f} s in all."
    )


progress_ui.training_section(ctx, static=finished_curves)  # live, redrawn every few seconds, while it trains

n_all = int(counted["predictions"].sum())
if n_all:
    st.subheader("Confidence")
    t = calibration_ui.temperature(ctx.url, ctx.run_id)
    large = t is not None and not calibration_ui.whole_run(ctx)
    stored_hist = scale_ui.stored_confidence_counts(ctx) if large else None
    words, n_shown = calibration_ui.word(ctx), n_all
    if t is not None and not large:  # calibrated confidences come from each image's logits
        fig = confidence_histogram(calibration_ui.shown(ctx, loaders.load_predictions(ctx.url, ctx.run_id, ctx.stamp)))
    elif stored_hist is not None:  # a large run: the calibrated counts jobs.calibrate stored for valid and test
        fig = binned_confidence_histogram(stored_hist, bins=scale_ui.HIST_BINS)
        words, n_shown = f"{words}, of valid and test as the calibration stored them", int(stored_hist["n"].sum())
    else:  # raw: the store counts the bins
        fig = binned_confidence_histogram(scale_ui.load_confidence_bins(ctx.url, ctx.run_id, ctx.stamp),
                                          bins=scale_ui.HIST_BINS)
        if t is not None:  # a large run calibrated before the counts were stored with it
            words = "raw (run `jobs.calibrate` again to store the calibrated ones of a run this size)"
    chart(fig, key="ov_conf", name="confidence")
    st.caption(f"Confidence of the predicted class, {words}, over {n_shown:,} predictions; "
               "the sidebar switch chooses raw or calibrated.")

st.subheader("Configuration")
cfg = {**info.config, "data_root": info.data_root, "cam_layer": info.cam_layer}
st.dataframe(
    pd.DataFrame({"setting": list(cfg), "value": [str(v) for v in cfg.values()]}),
    hide_index=True,
    key="ov_config",
)
