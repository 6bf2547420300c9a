"""Data issues: duplicates, leakage between splits, conflicting and suspect labels, from the run's data audit.

These are problems of the data, not of the model; the page reads what ``jobs.audit`` stored and draws it.
"""
import math
from typing import Optional

import pandas as pd
import streamlit as st

from core.cammaps import method_label
from core.intervals import suspects_warning
from core.splits import SPLITS
from dashboard import calibration_ui, loaders, reviews_ui, scale_ui, state
from dashboard.context import job_command, require_run
from dashboard.lookalikes_ui import neighbour_suspects_tab
from dashboard.methods_ui import method_param, method_picker
from dashboard.tiles import TILES_PER_ROW, map_of_class, picture, show_colorbar, show_picture

KINDS = ["exact", "near"]
GROUP_PAGE_SIZES = (10, 25, 50)
THUMB_PX = 160

st.title("Data issues")
ctx = require_run()
reviews_ui.reviewer_sidebar()
names = list(ctx.names)
ss = st.session_state
state.publish(run=ctx.run_id)  # the link names the run even when the page stops early (no audit yet)

report = loaders.load_audit(ctx.url, ctx.run_id, loaders.load_audit_stamp(ctx.url, ctx.run_id))
if report is None:
    st.info(
        f"Run #{ctx.run_id} has no data audit yet. Run `{job_command('audit', ctx.url, f'--run {ctx.run_id}')}`, "
        "then reload this page."
    )
    st.stop()


def label_name(i: int) -> str:
    return names[i] if 0 <= i < len(names) else f"class {i}"


stats = report.get("stats", {})
st.caption(
    f"What the model is not to blame for. Audited {(report.get('created_at') or '?').replace('T', ' ')} UTC over "
    f"{stats.get('n_images', '?'):,} images ({report.get('seconds', 0):.1f} s)"
    + (f"; {len(report['skipped'])} could not be read." if report["skipped"] else ".")
)
groups, leaks = report["groups"], report["leakage"]
# Suspects come from the model's confidences: ranked by the calibrated ones where the switch is on.
suspects, calibrated_rank = calibration_ui.ranked_suspects(ctx, report["suspects"])
model_acc = scale_ui.held_out_accuracy(ctx)  # counted in the store per split, not from the run's predictions
conflict_labels = {int(c["group"]): c["labels"] for c in report["conflicts"]}
m1, m2, m3, m4 = st.columns(4)
n_exact = sum(g["kind"] == "exact" for g in groups)
m1.metric("Duplicate groups", f"{len(groups):,}", help=f"{n_exact:,} exact, {len(groups) - n_exact:,} near")
m2.metric("Leaked images", f"{len(leaks):,}", help="valid/test images that also appear in an earlier split")
m3.metric("Label conflicts", f"{len(conflict_labels):,}", help="duplicate groups whose members carry different labels")
m4.metric("Suspect labels", f"{len(suspects):,}", help="given labels the model's out-of-sample probabilities doubt")
m4.caption(f"from a model with top-1 {model_acc.value:.1%} ({model_acc.brief()}) on valid/test")
quality = suspects_warning(model_acc, len(names))
if quality and suspects:
    st.warning(quality, icon=":material/warning:")

# ------------------------------------------------------------------------------------------- filters
with st.container(border=True):
    c1, c2, c3 = st.columns([1, 2, 1])
    state.seed("di_kind", "kind", [], valid=lambda v: all(x in KINDS for x in v))
    kinds = c1.multiselect("Kind of duplicate", KINDS, key="di_kind", placeholder="any kind")
    state.seed("di_sport", "sport", [], valid=lambda v: all(x in names for x in v))
    sports = c2.multiselect("Sport", names, key="di_sport", placeholder="any sport")
    size = c3.selectbox("Per page", GROUP_PAGE_SIZES, key="di_size")
ss["kind"], ss["sport"] = kinds, sports
wanted = {names.index(s) for s in sports}


def kind_ok(kind: str) -> bool:
    return not kinds or kind in kinds


def sport_ok(*labels: int) -> bool:
    return not wanted or any(int(x) in wanted for x in labels)


shown_groups = [g for g in groups if kind_ok(g["kind"]) and sport_ok(*(m["label"] for m in g["members"]))]
shown_leaks = [lk for lk in leaks if kind_ok(lk["kind"]) and sport_ok(lk["image"]["label"], lk["duplicate_of"]["label"])]
shown_conflicts = [g for g in shown_groups if int(g["id"]) in conflict_labels]
shown_suspects = [sp for sp in suspects if sport_ok(sp["label"], sp["pred_label"])]
shown_neighbours = [r for r in report.get("neighbour_suspects", []) if sport_ok(r["label"], r["majority_label"])]

# A change of filter goes back to the first page of every list.
signature = (tuple(kinds), tuple(sports), size)
if ss.get("_di_sig") != signature:
    if "_di_sig" in ss:
        for k in ("di_groups_page", "di_conflicts_page", "di_suspects_page"):
            ss.pop(k, None)
    ss["_di_sig"] = signature


def paged(items: list, key: str) -> list:
    """The items of the page chosen with a page number input (drawn only when there is more than one)."""
    pages = max(1, math.ceil(len(items) / size))
    if pages == 1:
        return items
    if not 1 <= ss.get(key, 1) <= pages:
        ss[key] = 1
    n1, n2 = st.columns([1, 4])
    page = int(n1.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=key))
    start = (page - 1) * size
    n2.caption(f"Showing {start + 1}–{min(start + size, len(items))} of {len(items):,}.")
    return items[start : start + size]


def show_group(g: dict, key: str) -> None:
    members = g["members"]
    labels = sorted({int(m["label"]) for m in members})
    splits = [s for s in SPLITS if s in {m["split"] for m in members}]
    extra = []
    if int(g["id"]) in conflict_labels:
        extra.append("⚠ labels disagree: " + ", ".join(
            f"{label_name(int(k))} ×{n}" for k, n in conflict_labels[int(g["id"])].items()))
    if len(splits) > 1:
        extra.append("⚠ spans " + " / ".join(splits))
    with st.container(border=True):
        st.markdown(
            f"**Group {g['id']}** · {g['kind']} · score {g['score']:.3f} · {len(members)} images · "
            f"{', '.join(label_name(x) for x in labels)}" + "".join(f"  \n{e}" for e in extra)
        )
        per_row = TILES_PER_ROW + 1
        for start in range(0, len(members), per_row):
            for col, m in zip(st.columns(per_row), members[start : start + per_row]):
                with col:
                    show_picture(picture(ctx, m["relpath"], THUMB_PX))
                    st.caption(f"**{m['split']}** · {label_name(int(m['label']))}  \n{m['relpath']}")
                    review_tile(m, f"{key}_rv_{g['id']}_{m['relpath']}")


def review_tile(ref: dict, key: str, suggest: Optional[int] = None) -> None:
    """The Review popover of an image the audit names (by id, else by split and relpath)."""
    image = reviews_ui.image_for(ctx, ref.get("image_id"), split=ref["split"], relpath=ref["relpath"])
    reviews_ui.tile_review(ctx, image, key=key, suggest=label_name(suggest) if suggest is not None else None)


def show_groups(items: list, key: str, none: str) -> None:
    if not items:
        st.info(none)
        return
    for g in paged(items, key):
        show_group(g, key)


no_match = "None match the filters." if (kinds or sports) else "None found."
t_dup, t_leak, t_conf, t_sus, t_nb = st.tabs([
    f"Duplicates ({len(shown_groups):,})", f"Leakage ({len(shown_leaks):,})",
    f"Label conflicts ({len(shown_conflicts):,})", f"Suspect labels ({len(shown_suspects):,})",
    f"Neighbour labels ({len(shown_neighbours):,})",
])

with t_dup:
    st.caption("Groups of identical (exact) or nearly identical (near: re-encoded, resized, cropped, shifted, "
               "brighter) images; the score is the weakest similarity that holds a group together.")
    show_groups(shown_groups, "di_groups_page", f"No duplicate groups. {no_match}")

with t_leak:
    acc = pd.DataFrame(report.get("leakage_accuracy") or [])
    if not acc.empty:
        st.markdown("**Accuracy as measured and with the leaked images removed** (whole run, unfiltered)")
        acc = acc.assign(**{c: 100 * pd.to_numeric(acc[c], errors="coerce") for c in
                            ("accuracy", "accuracy_clean", "change")})
        st.dataframe(
            acc[["split", "n", "accuracy", "n_leaked", "n_clean", "accuracy_clean", "change"]],
            hide_index=True, key="di_acc",
            column_config={
                "accuracy": st.column_config.NumberColumn("accuracy", format="%.1f%%"),
                "n_leaked": st.column_config.NumberColumn("leaked"),
                "n_clean": st.column_config.NumberColumn("n without leaked"),
                "accuracy_clean": st.column_config.NumberColumn("accuracy without leaked", format="%.1f%%"),
                "change": st.column_config.NumberColumn("change (points)", format="%+.1f"),
            },
        )
    if shown_leaks:
        st.markdown("**Leaked images**: a valid or test image with a duplicate in an earlier split")
        st.dataframe(
            pd.DataFrame([{
                "split": lk["image"]["split"], "image": lk["image"]["relpath"],
                "label": label_name(int(lk["image"]["label"])),
                "duplicate of": lk["duplicate_of"]["relpath"], "its split": lk["duplicate_of"]["split"],
                "its label": label_name(int(lk["duplicate_of"]["label"])),
                "kind": lk["kind"], "score": lk["score"], "group": lk["group"],
            } for lk in shown_leaks]),
            hide_index=True, key="di_leaks",
            column_config={"score": st.column_config.NumberColumn("score", format="%.3f")},
        )
    else:
        st.info(f"No leaked images. {no_match}")

with t_conf:
    st.caption("Duplicate groups whose members carry different labels: at least one of them is wrong.")
    show_groups(shown_conflicts, "di_conflicts_page", f"No label conflicts. {no_match}")

with t_sus:
    pick, _ = st.columns([1, 3])
    method = method_picker(ctx, "di_method", container=pick)
    st.caption("Images whose given label the model's out-of-sample probabilities doubt (confident learning), "
               f"the least likely given label first. The overlay is the {method_label(method)} map of the model's "
               "class.  \n"
               f"The model behind them: top-1 {model_acc}. Probabilities shown and ranked: "
               + (f"{calibration_ui.word(ctx)}." if calibrated_rank else "raw (as the audit stored them)."))
    if not shown_suspects:
        st.info(f"No suspect labels. {no_match}")
    else:
        page = paged(shown_suspects, "di_suspects_page")
        rank = {id(sp): i + 1 for i, sp in enumerate(suspects)}
        maps = loaders.load_maps(ctx.url, ctx.run_id, tuple(int(sp["image_id"]) for sp in page if "image_id" in sp),
                                 ctx.stamp, method)
        per_row = TILES_PER_ROW
        show_colorbar(note="map of the model's class, each scaled to its own peak")
        for start in range(0, len(page), per_row):
            for col, sp in zip(st.columns(per_row), page[start : start + per_row]):
                cam = map_of_class(maps.get(int(sp.get("image_id", -1))), int(sp["pred_label"]))
                with col:
                    show_picture(picture(ctx, sp["relpath"], THUMB_PX, cam))
                    st.caption(
                        f"#{rank[id(sp)]} · {sp['relpath']}  \n"
                        f"given: {label_name(int(sp['label']))} ({sp['given_prob']:.0%})  \n"
                        f"model: {label_name(int(sp['pred_label']))} ({sp['pred_prob']:.0%})"
                        + ("" if cam is not None else "  \nno stored map for the model's class")
                    )
                    review_tile(sp, f"di_sus_rv_{sp['relpath']}", suggest=int(sp["pred_label"]))
                    if "image_id" in sp and st.button("Compare", key=f"di_sus_{sp['image_id']}", width="stretch"):
                        ss["image"] = int(sp["image_id"])
                        st.switch_page("views/compare.py")

with t_nb:
    picked = neighbour_suspects_tab(ctx, report, shown_neighbours)
    if picked is not None:
        ss["image"] = picked
        st.switch_page("views/compare.py")

state.publish(run=ctx.run_id, sport=sports, kind=kinds, method=method_param())
