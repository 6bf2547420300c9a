"""Which CAM method to read for this model: the methods ranked by faithfulness, overall and per class.

The trust job scores the maps of each CAM method, and of a random and a centred map, with deletion and
insertion curves (``core.faithfulness``). One number per map ranks them: its **score**, insertion AUC minus
deletion AUC (in [-1, 1], higher is better: the class probability rises fast as the pixels the map ranks
highest are revealed, and falls fast as they are removed). The methods are ranked by their mean score over
the images' predicted-class maps.

How sure is the ranking? Means can be moved by a few images, so the table also says on how many of the
images the winner's map scores higher than the runner-up's, with a Wilson interval (``core.intervals``):
an interval that holds 50 % means the two cannot be told apart on these images. The same per true class.
The pointing game (``core.cammaps.pointing_game``; where the images have object boxes) is reported beside
each method, with its interval, but does not enter the rank: it asks where the object is, not what the
model used.

Pandas and numpy only: the dashboard, ``db.queries`` and the report export all use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pandas as pd

from core.cammaps import BASELINE_RANDOM, BASELINES, METHOD_NAMES, TARGET_PRED, method_label
from core.intervals import Rate, rate, wilson_interval

SCORE = "score"  # insertion AUC minus deletion AUC of one map
RANK_COLUMNS = ["rank", "method", "name", "kind", "images", SCORE, "deletion_auc", "insertion_auc",
                "beats_random", "beats_random_lo", "beats_random_hi", "pointing_n", "pointing",
                "pointing_lo", "pointing_hi", "pointing_random"]
PER_CLASS_COLUMNS = ["class", "images", "winner", "winner_score", "runner_up", "runner_up_score",
                     "beats_runner_up", "n", "lo", "hi"]


@dataclass(frozen=True)
class MethodRanking:
    """The ranking of one run's scored CAM methods.

    ``table``: one row per map scored (``RANK_COLUMNS``), the CAM methods by rank, then the baselines
    (kind "baseline", no rank). ``per_class``: per true class its winner and runner-up (``PER_CLASS_COLUMNS``).
    ``confidence``: images where the winner's score beats the runner-up's (or, with one method scored, the
    random map's). ``sentence``: which method to read, in one sentence.
    """

    table: pd.DataFrame
    per_class: pd.DataFrame
    winner: str
    runner_up: str
    confidence: Rate
    sentence: str


def map_scores(frame: pd.DataFrame, target: str = TARGET_PRED) -> pd.DataFrame:
    """``trust_frame`` rows of ``target`` -> one row per image (index: image_id; a ``label`` column) and one
    column per map scored, holding its score (insertion AUC - deletion AUC)."""
    f = frame[frame["target"] == target]
    if f.empty:
        return pd.DataFrame(columns=["label"])
    f = f.assign(**{SCORE: f["insertion_auc"] - f["deletion_auc"]})
    wide = f.pivot_table(index="image_id", columns="method", values=SCORE, aggfunc="mean")
    wide.columns = [str(c) for c in wide.columns]
    wide.insert(0, "label", f.groupby("image_id")["label"].first())
    return wide


def scored_methods(names: Sequence[str]) -> list[str]:
    """The CAM methods among ``names``, in ``METHOD_NAMES`` order (baselines and unknown names left out)."""
    return [m for m in METHOD_NAMES if m in set(names)]


def beats(wide: pd.DataFrame, a: str, b: str) -> Rate:
    """Images where map ``a`` scores strictly higher than map ``b`` (among those where both were scored)."""
    both = wide[[a, b]].dropna()
    return rate(int((both[a] > both[b]).sum()), len(both))


def _pointing(pointing: Optional[pd.DataFrame]) -> pd.DataFrame:
    cols = ["pointing_n", "pointing", "pointing_lo", "pointing_hi", "pointing_random"]
    if pointing is None or pointing.empty:
        return pd.DataFrame(columns=cols)
    g = pointing.groupby("method")
    out = pd.DataFrame({"pointing_n": g.size(), "hits": g["hit"].sum().astype(int),
                        "pointing_random": g["box_share"].mean()})
    out["pointing"] = out["hits"] / out["pointing_n"]
    out["pointing_lo"], out["pointing_hi"] = wilson_interval(out["hits"].to_numpy(), out["pointing_n"].to_numpy())
    return out[cols]


def rank_table(wide: pd.DataFrame, frame: pd.DataFrame, pointing: Optional[pd.DataFrame] = None,
               target: str = TARGET_PRED) -> pd.DataFrame:
    """``RANK_COLUMNS``: the CAM methods by mean score (best first), then the baselines."""
    f = frame[frame["target"] == target]
    means = f.groupby("method")[["deletion_auc", "insertion_auc"]].mean()
    methods = scored_methods(wide.columns)
    rows = []
    for m in methods + [b for b in BASELINES if b in wide.columns]:
        col = wide[m].dropna()
        row = dict(method=m, name=method_label(m), kind="method" if m in methods else "baseline",
                   images=len(col), score=float(col.mean()), deletion_auc=float(means.loc[m, "deletion_auc"]),
                   insertion_auc=float(means.loc[m, "insertion_auc"]))
        if m != BASELINE_RANDOM and BASELINE_RANDOM in wide.columns:
            r = beats(wide, m, BASELINE_RANDOM)
            row.update(beats_random=r.value, beats_random_lo=r.lo, beats_random_hi=r.hi)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=RANK_COLUMNS)
    order = table[table["kind"] == "method"].sort_values([SCORE, "method"], ascending=[False, True], kind="stable")
    table = pd.concat([order, table[table["kind"] == "baseline"]], ignore_index=True)
    table.insert(0, "rank", pd.array([i + 1 if k == "method" else pd.NA for i, k in enumerate(table["kind"])],
                                     dtype="Int64"))
    table = table.join(_pointing(pointing), on="method")
    return table.reindex(columns=RANK_COLUMNS)


def rank_per_class(wide: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per true class: the method with the best mean score, the runner-up, and on how many of the class's
    images the winner beats it (share, n and Wilson interval); classes by name."""
    methods = scored_methods(wide.columns)
    rows = []
    for label, g in wide.groupby("label"):
        means = g[methods].mean().dropna().sort_values(ascending=False, kind="stable")
        if means.empty:
            continue
        name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(label)
        row = dict(**{"class": name}, images=len(g), winner=means.index[0], winner_score=float(means.iloc[0]))
        if len(means) > 1:
            r = beats(g, means.index[0], means.index[1])
            row.update(runner_up=means.index[1], runner_up_score=float(means.iloc[1]), beats_runner_up=r.value,
                       n=r.n, lo=r.lo, hi=r.hi)
        rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=PER_CLASS_COLUMNS)
    return out.sort_values("class", kind="stable").reset_index(drop=True) if not out.empty else out


def verdict(table: pd.DataFrame, confidence: Rate, runner_up: str) -> str:
    """One sentence: which method to read, and how sure that is."""
    ranked = table[table["kind"] == "method"]
    top = ranked.iloc[0]
    name = top["name"]
    sure = (f"{confidence.k} of {confidence.n} images ({confidence.value:.0%}, 95% interval "
            f"{confidence.lo:.0%}-{confidence.hi:.0%})")
    random = table[table["method"] == BASELINE_RANDOM]
    if not random.empty and top[SCORE] <= float(random[SCORE].iloc[0]):
        return (f"No CAM method is faithful to this model on these images: the best, {name}, scores no better "
                f"than a random map ({top[SCORE]:.3f} against {float(random[SCORE].iloc[0]):.3f}).")
    if len(ranked) == 1:
        return (f"Read {name}, the only CAM method scored: its maps beat a random map's on {sure}.")
    other = method_label(runner_up)
    if confidence.lo > 0.5:
        return (f"Read {name}: its maps are the most faithful to this model (score {top[SCORE]:.3f}) and beat "
                f"those of the runner-up, {other}, on {sure}.")
    return (f"Read {name}, but {other} is close behind: {name} leads on the mean score ({top[SCORE]:.3f} "
            f"against {float(ranked.iloc[1][SCORE]):.3f}) yet beats it on only {sure}, an interval that holds "
            f"an even split.")


def rank_methods(frame: pd.DataFrame, class_names: Sequence[str], pointing: Optional[pd.DataFrame] = None,
                 target: str = TARGET_PRED) -> Optional[MethodRanking]:
    """The ranking of the CAM methods in ``frame`` (``db.queries.trust_frame`` rows) by their ``target`` maps,
    with ``pointing`` (``db.queries.pointing_frame`` rows) beside them; None when no CAM method was scored."""
    wide = map_scores(frame, target)
    methods = scored_methods(wide.columns)
    if not methods:
        return None
    table = rank_table(wide, frame, pointing, target)
    ranked = table[table["kind"] == "method"]["method"].tolist()
    winner = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else BASELINE_RANDOM
    if runner_up not in wide.columns:  # one method and no random map: nothing to beat
        confidence = rate(0, 0)
    else:
        confidence = beats(wide, winner, runner_up)
    return MethodRanking(table=table, per_class=rank_per_class(wide, class_names), winner=winner,
                         runner_up=runner_up, confidence=confidence, sentence=verdict(table, confidence, runner_up))
