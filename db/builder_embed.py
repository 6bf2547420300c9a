"""Feature vectors and a 2-D map for the generated stores of ``db.builder``, as ``jobs.train`` and
``jobs.embed`` would store them: for the tests and the benchmarks of the Map page, "It looks like these",
``jobs.similar`` and the neighbour-label audit."""
from __future__ import annotations

import numpy as np

from core.neighbours import encode_vectors
from core.splits import TRAIN
from db import queries
from db.store import make_engine, make_sessionmaker, put_vectors, replace_map


def add_embedding(url: str, run_id: int, *, dim: int = 256, seed: int = 0, plant: bool = True,
                  map_: bool = True) -> dict[str, int]:
    """Store what ``jobs.train`` and ``jobs.embed`` would: a feature vector for every usable image of the run
    and, with ``map_``, a 2-D map of them.

    Vectors are non-negative and clustered by true class (a ReLU of a class centre plus noise); a
    misclassified image sits between its true and its predicted class. The map places the classes on a
    spiral and every point near its class (a mistake between its two classes); its method is recorded as
    "layout". With ``plant``: ``flipped``, the first training image, gets the vector of a class-1 image
    (its neighbours all carry label 1, so the neighbour audit flags it), and ``copy``, the last training
    image, gets the exact vector of ``original``, the first image of the last split (each other's nearest
    neighbour at similarity 1). Returns those image ids.
    """
    rng = np.random.default_rng(seed + 104_729)  # its own stream: the rest of the store does not change
    engine = make_engine(url, create=False)
    Session = make_sessionmaker(engine)
    with Session() as s:
        images = queries.scored_images(s, run_id)
        n_classes = len(queries.class_names(s, run_id))
    labels = images["label"].to_numpy(np.int64)
    pred = images["pred"].to_numpy(dtype=np.int64, na_value=-1)
    other = np.where(pred >= 0, pred, labels)
    centres = rng.normal(size=(n_classes, dim)) * 2.0
    mix = np.where(other != labels, 0.55, 1.0)[:, None]
    vectors = np.maximum(mix * centres[labels] + (1 - mix) * centres[other] + rng.normal(size=(len(images), dim)),
                         0.0).astype(np.float32)
    planted: dict[str, int] = {}
    splits = images["split"].to_numpy()
    train_rows = np.flatnonzero(splits == TRAIN)
    if plant and len(train_rows) >= 2 and n_classes > 1:
        donors = np.flatnonzero(labels == 1)
        flipped = int(train_rows[0]) if labels[train_rows[0]] != 1 else int(train_rows[1])
        vectors[flipped] = vectors[donors[0]] * 1.01
        original = int(np.flatnonzero(splits == splits[-1])[0])
        copy = int(train_rows[-1])
        vectors[copy] = vectors[original]
        planted = {"flipped": int(images["image_id"].iat[flipped]), "original": int(images["image_id"].iat[original]),
                   "copy": int(images["image_id"].iat[copy])}
    ids = images["image_id"].to_numpy(np.int64)
    blobs = encode_vectors(vectors)
    with Session.begin() as s:
        for lo in range(0, len(ids), 5000):
            put_vectors(s, run_id, [dict(image_id=int(i), dim=dim, data=b) for i, b in
                                    zip(ids[lo:lo + 5000], blobs[lo:lo + 5000])])
    if map_:
        turn = np.arange(n_classes) * 2.399963  # the golden angle: classes spread evenly over a disc
        radius = np.sqrt((np.arange(n_classes) + 0.5) / n_classes)
        at = np.stack([radius * np.cos(turn), radius * np.sin(turn)], axis=1)
        spread = 0.35 / np.sqrt(n_classes)
        xy = at[labels] * mix + at[other] * (1 - mix) + rng.normal(size=(len(ids), 2)) * spread
        with Session.begin() as s:
            replace_map(s, run_id, ids.tolist(), xy.astype(np.float32), method="layout", seed=seed,
                        params={"n": len(ids), "generated": True}, seconds=0.0)
    engine.dispose()
    return planted
