"""Review queue: the images of the run that need a person's look, why, and the verdicts given so far.

The reasons come from the data audit (leaked, duplicates labelled differently, suspect label, duplicate)
and from the predictions (confident errors). One image at a time, with keyboard shortcuts to step through
the queue and to give a verdict without the mouse.
"""
import pandas as pd
import streamlit as st

from core import review_queue as rq
from core.reviews import MAX_NOTE
from dashboard import loaders, reviews_ui, state
from dashboard.context import job_command, require_run
from dashboard.tiles import map_of_class, picture, show_picture

STATUSES = ("to review", "reviewed", "all")
IMAGE_PX = 320

st.title("Review queue")
ctx = require_run()
reviews_ui.reviewer_sidebar()
names = list(ctx.names)
ss = st.session_state

audit_stamp = loaders.load_audit_stamp(ctx.url, ctx.run_id)
queue = reviews_ui.load_queue(ctx.url, ctx.run_id, ctx.stamp, audit_stamp)
if queue.empty:
    hint = ("" if audit_stamp else f" The run has no data audit yet: "
            f"`{job_command('audit', ctx.url, f'--run {ctx.run_id}')}` finds duplicates, leakage and suspect labels.")
    st.info(f"Nothing in run #{ctx.run_id} needs a look: no audit findings and no confident errors "
            f"(wrong at {rq.CONFIDENT:.0%} or more).{hint}")
    st.stop()

latest = reviews_ui.latest(ctx.url)
verdicts = queue["sha256"].map(latest["verdict"]) if len(latest) else pd.Series(None, index=queue.index, dtype=object)
queue = queue.assign(verdict=verdicts)
reviews_ui.show_flash()

# ------------------------------------------------------------------------------------------- filters
present = [r for r in rq.REASONS if queue["reasons"].map(lambda rs, r=r: r in rs).any()]
with st.container(border=True):
    c1, c2, c3 = st.columns([2, 2, 1])
    state.seed("rq_sport", "sport", [], valid=lambda v: all(x in names for x in v))
    sports = c1.multiselect("Sport (given label)", names, key="rq_sport", placeholder="any sport")
    reasons = c2.multiselect("Reason", present, format_func=rq.REASON_LABELS.get, key="rq_reason",
                             placeholder="any reason")
    status = c3.radio("Show", STATUSES, key="rq_status")
ss["sport"] = sports
shown = rq.filter_queue(queue, names, sports=sports, reasons=reasons)

n_all, k_all = len(queue), int(queue["verdict"].notna().sum())
n_f, k_f = len(shown), int(shown["verdict"].notna().sum())
st.progress(k_all / n_all if n_all else 0.0)
line = f"**{k_all:,} of {n_all:,}** images in the queue reviewed ({k_all / n_all:.1%})"
if (n_f, k_f) != (n_all, k_all):
    line += f"; under the filters {k_f:,} of {n_f:,}" + (f" ({k_f / n_f:.1%})" if n_f else "")
st.markdown(line + ".")
no_hash = int(queue["sha256"].isna().sum())
if no_hash:
    st.warning(f"{no_hash:,} of these images have no recorded file hash and cannot be reviewed: "
               f"`{job_command('cams', ctx.url, f'--run {ctx.run_id}')}` records them.")

table = rq.reason_table(shown, shown["verdict"])
with st.expander("How often each reason was right", expanded=False):
    st.caption("Per reason: images in the queue (under the filters), how many have a verdict, and how many of "
               "those a reviewer confirmed (label wrong, or not a valid image), with the 95 % Wilson interval.")
    st.dataframe(
        table.assign(interval=[f"{lo:.0%} – {hi:.0%}" if pd.notna(lo) else "" for lo, hi in zip(table["low"],
                                                                                              table["high"])])
        [["reason", "in_queue", "reviewed", "confirmed", "confirmed_share", "interval"]],
        hide_index=True, key="rq_reasons",
        column_config={"in_queue": "in queue",
                       "confirmed_share": st.column_config.NumberColumn("confirmed", format="percent"),
                       "interval": "95 % interval"},
    )

# ------------------------------------------------------------------------------------------- one image
items = {"to review": shown[shown["verdict"].isna()], "reviewed": shown[shown["verdict"].notna()],
         "all": shown}[status]
signature = (tuple(sports), tuple(reasons), status)
if ss.get("_rq_sig") != signature:
    ss["_rq_pos"] = 0
    ss["_rq_sig"] = signature
pos = min(max(0, int(ss.get("_rq_pos", 0))), max(0, len(items) - 1))
ss["_rq_pos"] = pos


def step(delta: int) -> None:
    ss["_rq_pos"] = max(0, min(len(items) - 1, ss.get("_rq_pos", 0) + delta))


def after_verdict(saved: bool) -> None:
    # a reviewed image leaves the "to review" list, so the same position shows the next one
    if saved and status != "to review":
        step(1)


if items.empty:
    st.success("Every image under these filters has a verdict." if status == "to review"
               else "No image matches these filters.")
else:
    item = items.iloc[pos]
    n1, n2, n3 = st.columns([1, 1, 4])
    n1.button("◀ Previous", key="rq_prev", on_click=step, args=(-1,), disabled=pos == 0, shortcut="K",
              width="stretch")
    n2.button("Next ▶", key="rq_next", on_click=step, args=(1,), disabled=pos >= len(items) - 1, shortcut="J",
              width="stretch")
    n3.caption(f"Image {pos + 1} of {len(items):,} ({status}). Keys: J next, K previous, F fine, L label wrong "
               "(to the class chosen), A ambiguous, D not a valid image; they do nothing while a text field has "
               "the focus.")
    image = reviews_ui.image_for(ctx, int(item["image_id"]))
    left, right = st.columns([1, 1.4])
    with left:
        has_pred = int(item["pred"]) >= 0
        cam = None
        if has_pred:
            maps = loaders.load_maps(ctx.url, ctx.run_id, (int(item["image_id"]),), ctx.stamp)
            cam = map_of_class(maps.get(int(item["image_id"])), int(item["pred"]))
        show_picture(picture(ctx, item["relpath"], IMAGE_PX))
        if cam is not None:
            show_picture(picture(ctx, item["relpath"], IMAGE_PX, cam))
            st.caption("Below: the Grad-CAM map of the predicted class.")
    with right:
        pred = (f" · predicted **{names[int(item['pred'])]}** at {item['confidence']:.0%}" if has_pred else "")
        st.markdown(f"**{item['relpath']}** ({item['split']}) · labelled **{names[int(item['label'])]}**{pred}")
        st.text("Why: " + item["why"])
        reviews_ui.show_history(ctx.url, image, key=f"rq_hist_{item['image_id']}")
        if image is not None and image.sha256:
            others = [n for n in names if n != image.label]
            suggest = names[int(item["suggest"])] if int(item["suggest"]) >= 0 else None
            class_key, note_key = f"rq_class_{item['image_id']}", f"rq_note_{item['image_id']}"
            st.selectbox("The class it should carry (for 'label wrong')", others, key=class_key,
                         index=others.index(suggest) if suggest in others else 0)
            st.text_input("Note (optional)", key=note_key, max_chars=MAX_NOTE)
            reviews_ui.quick_buttons(ctx, image, class_key=class_key, note_key=note_key, after=after_verdict)

# ------------------------------------------------------------------------------------------- reviewed
done = shown[shown["verdict"].notna()]
st.subheader(f"Reviewed ({len(done):,})")
if done.empty:
    st.caption("No verdicts yet under these filters.")
else:
    rows = latest.loc[done["sha256"]].reset_index(drop=True)
    st.dataframe(pd.DataFrame({
        "image": done["relpath"].to_numpy(), "split": done["split"].to_numpy(),
        "label": [names[int(i)] for i in done["label"]],
        "verdict": [reviews_ui.describe(r) for _, r in rows.iterrows()],
        "note": rows["note"], "reviewer": rows["reviewer"], "reviewed (UTC)": rows["created_at"],
        "why queued": [", ".join(rq.REASON_LABELS[x] for x in rs) for rs in done["reasons"]],
    }), hide_index=True, key="rq_done")

state.publish(run=ctx.run_id, sport=sports)
