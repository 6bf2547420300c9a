"""Calibration: can the confidences be believed? Reliability, ECE before and after temperature scaling, per class.

Reads the logits each prediction stored and the temperature ``jobs.calibrate`` fitted on the validation
split; every number is computed from those (``core.calibration``), nothing runs the model.
"""
import numpy as np
import pandas as pd
import streamlit as st

from core import calibration as cal
from core.figures_calibration import confidence_split_histogram, ece_before_after, per_class_ece_bars, reliability_diagram
from core.intervals import FEW_IMAGES, rate
from core.splits import TEST, VALID
from dashboard import calibration_ui, state
from dashboard.charts import chart
from dashboard.context import require_run

st.title("Calibration")
ctx = require_run()
names = ctx.names
ss = st.session_state
state.publish(run=ctx.run_id)
db = calibration_ui.shown_url(ctx.url)

coverage = calibration_ui.load_coverage(ctx.url, ctx.run_id).set_index("split")
evaluated = [s for s in (VALID, TEST) if s in coverage.index]
if not evaluated:
    st.info(f"Run #{ctx.run_id} has no predictions of valid or test yet; calibration is measured on them.")
    st.stop()
if int(coverage.loc[evaluated, "with_logits"].sum()) == 0:
    st.info(f"Run #{ctx.run_id} stored no logits, so its calibration cannot be measured; recompute them from its "
            f"checkpoint with `python -m jobs.cams --run {ctx.run_id} --db {db}`, then "
            f"`python -m jobs.calibrate --run {ctx.run_id} --db {db}`.")
    st.stop()

stored = calibration_ui.load_calibration(ctx.url, ctx.run_id, calibration_ui.load_calibration_stamp(ctx.url, ctx.run_id))
hint = f"`python -m jobs.calibrate --run {ctx.run_id} --db {db}`"
if stored is None:
    st.info(f"Run #{ctx.run_id} has no calibration yet: run {hint} to fit the temperature on the validation split. "
            "Below, the raw confidences only.")
elif stored.stale:
    st.warning(f"The predictions were evaluated again after this calibration ({stored.created_at} UTC); run {hint} "
               "again so the temperature fits the stored logits.")
temperature = stored.temperature if stored is not None else None
bins = stored.bins if stored is not None else cal.DEFAULT_BINS
switch_t = calibration_ui.temperature(ctx.url, ctx.run_id)

logits = calibration_ui.load_logits(ctx.url, ctx.run_id, len(names), ctx.stamp,
                                    calibration_ui.logits_key(ctx.url, ctx.run_id))
splits = [s for s in evaluated if (logits.frame["split"] == s).any()]
for s in evaluated:
    n, k = int(coverage.loc[s, "predictions"]), int(coverage.loc[s, "with_logits"])
    if k < n:
        st.caption(f"{s}: {k:,} of {n:,} predictions kept their logits; the figures use those "
                   f"(`python -m jobs.cams --run {ctx.run_id} --db {db}` recomputes the rest).")


def part(split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = (logits.frame["split"] == split).to_numpy()
    return logits.logits[rows], logits.frame["label"].to_numpy()[rows]


reports = {s: cal.split_metrics(*part(s), temperature=temperature or 1.0, bins=bins) for s in splits}
st.caption(
    "A confidence is calibrated when, among the images predicted with confidence c, a share c is right. "
    f"ECE: the mean gap between confidence and accuracy over {bins} equal-width bins, weighted by the images in "
    "each; MCE: the largest gap; NLL and Brier: proper scores of the whole probability vector (lower is better). "
    + (f"Temperature scaling divides the logits by T = {temperature:.3g}, fitted on valid by minimising its NLL "
       f"({'the raw confidences were too high' if temperature > 1 else 'the raw confidences were too low'}); "
       "it changes no prediction." if temperature is not None else "")
)

rows = []
for s, m in reports.items():
    z, y = part(s)
    acc = rate(int((z.argmax(axis=1) == y).sum()), len(y))
    rows.append({"split": s, "n": m["n"], "accuracy": 100 * acc.value, "accuracy 95%": f"{acc.lo:.1%}–{acc.hi:.1%}",
                 "ECE": m["ece"], "ECE after T": m["ece_calibrated"] if temperature else None, "MCE": m["mce"],
                 "NLL": m["nll"], "NLL after T": m["nll_calibrated"] if temperature else None, "Brier": m["brier"]})
c1, c2, c3 = st.columns(3)
c1.metric("Temperature", f"{temperature:.3g}" if temperature else "–", border=True,
          help="fitted on the validation split; above 1: the raw confidences were too high")
focus = TEST if TEST in reports else splits[0]
fm = reports[focus]
c2.metric(f"ECE, {focus}", f"{fm['ece']:.4f}", border=True,
          delta=f"{fm['ece_calibrated'] - fm['ece']:+.4f} with T" if temperature else None, delta_color="inverse")
c3.metric(f"NLL, {focus}", f"{fm['nll']:.4f}", border=True,
          delta=f"{fm['nll_calibrated'] - fm['nll']:+.4f} with T" if temperature else None, delta_color="inverse")
c2.caption(f"{fm['n']:,} images")
c3.caption(f"{fm['n']:,} images")
st.dataframe(pd.DataFrame(rows), hide_index=True, key="cal_table",
             column_config={c: st.column_config.NumberColumn(c, format="%.4f")
                            for c in ("ECE", "ECE after T", "MCE", "NLL", "NLL after T", "Brier")}
             | {"accuracy": st.column_config.NumberColumn("accuracy", format="%.1f%%")})
if temperature is not None:
    chart(ece_before_after({"temperature": temperature, **reports}), key="cal_ece", name="ece-before-after")

st.subheader("Reliability")
state.seed("cal_split", "_cal_split", focus, valid=lambda v: v in splits)
split = st.selectbox("Split", splits, key="cal_split")
ss["_cal_split"] = split
z, y = part(split)
scaled = None
if temperature is not None:
    conf_t, pred_t = cal.top1(cal.softmax(z, temperature))
    scaled = cal.reliability_bins(conf_t, pred_t == y, bins).records()
chart(reliability_diagram(reports[split]["bins"], calibrated=scaled), key="cal_reliability",
      name=f"reliability-{split}")
st.caption(f"{split}, {len(y):,} images. Bars: the accuracy in each confidence bin with its 95% Wilson interval, "
           "against the diagonal of perfect calibration; diamonds: the bin's mean confidence; below, the images per bin"
           + ("; the line: the same after temperature scaling." if scaled is not None else "."))

shown_t = switch_t or 1.0
conf, pred = cal.top1(cal.softmax(z, shown_t))
chart(confidence_split_histogram(conf, pred == y), key="cal_hist", name=f"confidence-right-wrong-{split}")
st.caption(f"Confidence of the predicted class ({calibration_ui.word(ctx)}) of the right and the wrong predictions "
           f"of {split}: a model that knows when it is wrong keeps its mistakes at low confidence.")

st.subheader("Per class")
table = cal.per_class_ece(z, y, bins=bins, temperature=shown_t, names=list(names))
table = table.assign(few=table["n"] < FEW_IMAGES)
left, right = st.columns([1, 1.3])
with left:
    st.dataframe(table[["class", "n", "few", "ece", "confidence", "accuracy", "gap"]], hide_index=True,
                 key="cal_per_class", height=min(460, 38 + 35 * len(table)),
                 column_config={
                     "n": st.column_config.NumberColumn("n", help="images of this sport in the split"),
                     "few": st.column_config.CheckboxColumn(f"< {FEW_IMAGES} images"),
                     "ece": st.column_config.NumberColumn("ECE", format="%.3f"),
                     "confidence": st.column_config.NumberColumn("mean confidence", format="%.3f"),
                     "accuracy": st.column_config.NumberColumn("accuracy", format="%.3f"),
                     "gap": st.column_config.NumberColumn("gap", format="%+.3f",
                                                          help="confidence - accuracy: above 0 overconfident"),
                 })
with right:
    chart(per_class_ece_bars(table, top=30, few=FEW_IMAGES), key="cal_per_class_bars", name=f"per-class-ece-{split}")
st.caption(f"ECE within each true sport's images of {split} ({calibration_ui.word(ctx)} confidences), worst first. "
           f"With few images a class's ECE is mostly noise: classes with fewer than {FEW_IMAGES} are marked.")
