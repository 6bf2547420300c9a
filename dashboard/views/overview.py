"""Overview: headline metrics per split, training curves of both phases, and the run's configuration."""
import pandas as pd
import streamlit as st

from core.figures import confidence_histogram, training_curves
from core.splits import SPLITS
from dashboard import loaders, progress_ui, state
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

preds = loaders.load_predictions(ctx.url, ctx.run_id, ctx.stamp)
evals = loaders.load_evaluations(ctx.url, ctx.run_id, ctx.stamp).set_index("split")
splits = [s for s in SPLITS if s in set(preds["split"]) or s in evals.index or s in info.metrics]
if not splits and info.status != "running":  # a running run shows its progress below
    st.info(no_results_message(ctx))
for split in splits:
    sp = preds[preds["split"] == split]
    m = info.metrics.get(split, {}) if isinstance(info.metrics.get(split), dict) else {}
    ev = evals.loc[split] if split in evals.index else None
    top1 = ev["top1"] if ev is not None and pd.notna(ev["top1"]) else m.get("top1")
    top5 = ev["top5"] if ev is not None and pd.notna(ev["top5"]) else m.get("top5")
    if len(sp):
        table = loaders.load_per_class(ctx.url, ctx.run_id, ctx.names, (split,), ctx.stamp)
        seen = table[(table["support"] > 0) | (table["predicted"] > 0)]
        macro_f1 = float(seen["f1"].mean()) if len(seen) else None
        n_err = int((sp["label"] != sp["pred"]).sum())
    else:
        macro_f1, n_err = None, None
    st.subheader(f"{split} split" + (f" · {len(sp)} images" if len(sp) else ""))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Top-1 accuracy", f"{top1:.1%}" if top1 is not None else "–", border=True)
    c2.metric("Top-5 accuracy", f"{top5:.1%}" if top5 is not None else "–", border=True)
    c3.metric("Macro F1", f"{macro_f1:.3f}" if macro_f1 is not None else "–", border=True)
    c4.metric("Errors", f"{n_err:,}" if n_err is not None else "–", border=True)
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

if len(preds):
    st.subheader("Confidence")
    chart(confidence_histogram(preds), key="ov_conf", name="confidence")

st.subheader("Configuration")
cfg = {**info.config, "data_root": info.data_root, "cam_layer": info.cam_layer}
st.dataframe(
    pd.DataFrame({"setting": list(cfg), "value": [str(v) for v in cfg.values()]}),
    hide_index=True,
    key="ov_config",
)
