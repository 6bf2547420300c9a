"""What an image looks like to the model, on the pages that show one image or the data audit: its nearest
training images ("It looks like these") and the images whose neighbours carry another label.

Neighbours are searched among the stored feature vectors (``dashboard.embedding.load_vectors``), never
with the model.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd
import streamlit as st

from core.lookalikes import neighbours_table
from core.neighbours import describe_neighbour_labels
from core.splits import TRAIN
from dashboard import calibration_ui, embedding, loaders
from dashboard.context import Ctx, job_command

LOOKALIKES_K = 10


def looks_like_these(ctx: Ctx, image_id: int, label: int, pred: Optional[int], *, k: int = LOOKALIKES_K,
                     key: str = "lk") -> Optional[int]:
    """The section "It looks like these": the ``k`` nearest training images of one image with their labels
    and maps and, for a mistake, how many of them carry the predicted label. Returns the image id whose
    *Compare* button was pressed."""
    st.subheader("It looks like these")
    names = list(ctx.names)
    hint = embedding.embed_hint(ctx)
    stamp = embedding.load_embed_stamp(ctx.url, ctx.run_id)
    # A caption, not a box: the section is an extra of the page, which stays complete without it.
    if stamp is None:
        st.caption(f"Run #{ctx.run_id} has no feature vectors, so its images' neighbours are unknown. Compute them "
                   f"with {hint}.")
        return None
    vecs = embedding.load_vectors(ctx.url, ctx.run_id, stamp)
    if not vecs.has(image_id):
        st.caption(f"This image has no feature vector yet. Compute the missing ones with {hint}.")
        return None
    has_train = TRAIN in vecs.splits()
    pool = "training" if has_train else ""
    table = calibration_ui.shown(ctx, neighbours_table(vecs.images, vecs.index, image_id, k,
                                                       (TRAIN,) if has_train else None))
    if table.empty:
        st.caption("No other image has a feature vector to compare with.")
        return None
    labels = table["label"].tolist()
    sentences = []
    if pred is not None and pred != label:
        sentences.append(describe_neighbour_labels(labels, pred, names, pool=pool, markdown=True) + ".")
    sentences.append(describe_neighbour_labels(labels, label, names, pool=pool, markdown=True)
                     + (" (its given label)." if pred is not None and pred != label else "."))
    st.markdown(" ".join(sentences))
    caption = (f"The {len(table)} images whose feature vectors are most like this one's (cosine similarity), "
               + ("from the training set" if has_train else
                  f"from every split: no training image has a vector yet ({hint} computes them)")
               + ". Training images carry no map: the evaluation explains only the images it predicts.")
    st.caption(caption)
    extra = {int(r.image_id): f"similarity {r.similarity:.3f}" for r in table.itertuples()}
    return embedding.image_grid(ctx, table, key=key, extra=extra)


def neighbour_suspects_tab(ctx: Ctx, report: dict, shown: list[dict], *, key: str = "di_nb") -> Optional[int]:
    """The data audit's neighbour-label suspects ``shown`` (those of ``report["neighbour_suspects"]`` that
    pass the page's filters), each with its nearest images as evidence. Returns a pressed *Compare*'s
    image id."""
    names = list(ctx.names)
    found = report.get("neighbour_suspects") or []
    settings = report.get("neighbour_audit")
    if settings is None:
        st.info(f"This audit had no feature vectors to search. Compute them with {embedding.embed_hint(ctx)}, "
                f"then audit again with `{job_command('audit', ctx.url, f'--run {ctx.run_id}')}`.")
        return None
    st.caption(f"Images whose {settings['k']} nearest images (by the model's feature vectors, every split) carry "
               f"another label in at least {settings['min_share']:.0%} of cases, the most convincing first: a "
               "wrong label, or an image unlike its class. The evidence: the nearest images with their labels.")
    if not shown:
        st.info("None found." if not found else "None match the filters.")
        return None
    preds = calibration_ui.shown(ctx, loaders.load_predictions(ctx.url, ctx.run_id, ctx.stamp)).set_index("image_id")
    chosen = None
    for r in shown[:20]:
        with st.container(border=True):
            st.markdown(f"**{r['relpath']}** ({r['split']}) · labelled **{names[r['label']]}** · "
                        f"{r['majority_count']} of its {r['k']} nearest images are labelled "
                        f"**{names[r['majority_label']]}** (mean similarity {r['mean_similarity']:.3f})")
            rows = pd.DataFrame([{k: r[k] for k in ("image_id", "split", "relpath", "label")}]
                                + [{k: n[k] for k in ("image_id", "split", "relpath", "label")}
                                   for n in r["neighbours"][:4]])
            known = rows["image_id"].isin(preds.index)
            rows["pred"] = rows["image_id"].map(preds["pred"]).where(known, pd.NA)
            rows["confidence"] = rows["image_id"].map(preds["confidence"]).where(known, pd.NA)
            extra = {int(n["image_id"]): f"similarity {n['similarity']:.3f}" for n in r["neighbours"]}
            extra[int(r["image_id"])] = "the suspect"
            picked = embedding.image_grid(ctx, rows, key=f"{key}_{r['image_id']}", extra=extra)
            chosen = chosen or picked
    if len(shown) > 20:
        st.caption(f"The first 20 of {len(shown):,}; "
                   f"`{job_command('audit', ctx.url, f'--run {ctx.run_id}', '--json')}` lists them all.")
    return chosen
