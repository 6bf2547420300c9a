"""Feature vectors end to end: jobs.train stores those of the images it predicts, jobs.embed adds the rest
(resumably) and draws the map, jobs.similar finds neighbours, and the data audit reads the neighbours'
labels."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sqlalchemy import delete, func, select

from core.data import ImageDataset, Sample
from core.embed import features
from core.metrics import flags_from_report
from core.neighbours import describe_neighbour_labels
from core.model import load_checkpoint
from db import queries, store
from db.builder import build_store
from db.builder_embed import add_embedding
from db.models import FeatureVector, ImageRow, MapPoint, Prediction
from db.queries import embed as embed_queries
from jobs import embed as embed_job
from jobs import similar as similar_job
from jobs.auditing import audit_run, format_summary
from jobs.common import run_cli
from tests.conftest import make_dataset
from tests.test_train import run_train

ORIGINAL, COPY = "valid/alpha/000.jpg", "train/beta/copy.jpg"
EMBED = ["--workers", "0", "--batch-size", "4", "--method", "pca", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run whose training set holds a byte copy of a validation image, labelled otherwise."""
    tmp = tmp_path_factory.mktemp("embed")
    data = make_dataset(tmp / "data", per_split={"train": 4, "valid": 3})
    shutil.copyfile(data / ORIGINAL, data / COPY)
    db, run_id = run_train(tmp, data, "--run-name", "embed run")
    return tmp, data, db, run_id


def sessions(db):
    return store.make_sessionmaker(store.make_engine(db, create=False))


def embed(db, *extra):
    return run_cli(embed_job.main, embed_job.get_args_parser(), ["--db", db, "--run", "1", *EMBED, *extra])


def similar(db, *extra):
    return run_cli(similar_job.main, similar_job.get_args_parser(), ["--db", db, "--run", "1", *extra])


def test_train_stores_the_vector_of_every_image_it_predicts(run):
    tmp, data, db, run_id = run
    with sessions(db)() as s:
        n_pred = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.run_id == run_id))
        stored = embed_queries.stored_vectors(s, run_id)
        ckpt = queries.run_info(s, run_id).checkpoint_path
    assert n_pred == 9 and len(stored) == 9 and stored.dim == 256
    assert set(stored.images["split"]) == {"valid"} and stored.images["pred"].notna().all()
    # the vectors are those of the best checkpoint, as a plain forward computes them
    model, meta = load_checkpoint(ckpt)
    ds = ImageDataset(data, [Sample(r, int(lab)) for r, lab in zip(stored.images["relpath"], stored.images["label"])],
                      meta.image_size, train=False, mean=meta.mean, std=meta.std)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    np.testing.assert_allclose(stored.vectors, features(model, x), rtol=2e-3, atol=2e-3)


def test_embed_fills_the_training_set_once_and_draws_the_map(run, capsys):
    _, _, db, run_id = run
    assert embed(db) == 0
    out = capsys.readouterr().out
    assert "13 vectors computed, 9 already stored, 0 unreadable" in out and "map: 22 points (pca, seed 0)" in out
    with sessions(db)() as s:
        assert embed_queries.vector_counts(s, run_id) == {"train": 13, "valid": 9}
        first = embed_queries.map_points(s, run_id)
        stamp = embed_queries.embed_stamp(s, run_id)
    assert len(first) == 22 and np.isfinite(first[["x", "y"]].to_numpy()).all()
    assert first["pred"].isna().sum() == 13  # training images have no prediction
    # a second run has nothing to add and leaves the map as it is
    assert embed(db) == 0
    out = capsys.readouterr().out
    assert "0 vectors computed, 22 already stored" in out and "up to date" in out
    with sessions(db)() as s:
        assert embed_queries.embed_stamp(s, run_id) == stamp


def test_the_map_is_reproducible_for_a_seed(run, capsys):
    _, _, db, run_id = run
    embed(db, "--splits", "train")  # makes sure the vectors are there, whatever ran before
    with sessions(db)() as s:
        before = embed_queries.map_points(s, run_id)
    assert embed(db, "--remap") == 0
    with sessions(db)() as s:
        again = embed_queries.map_points(s, run_id)
        info = embed_queries.map_info(s, run_id)
    np.testing.assert_array_equal(before[["x", "y"]].to_numpy(), again[["x", "y"]].to_numpy())
    assert info["method"] == "pca" and info["seed"] == 0 and info["n_points"] == 22
    assert "drawn in" in capsys.readouterr().out


@pytest.mark.slow
def test_the_umap_map_is_reproducible_for_a_seed(run):
    _, _, db, run_id = run
    embed(db, "--splits", "train")
    maps = []
    for seed in (3, 3, 4):
        assert embed(db, "--method", "umap", "--seed", str(seed)) == 0
        with sessions(db)() as s:
            maps.append(embed_queries.map_points(s, run_id)[["x", "y"]].to_numpy())
            assert embed_queries.map_info(s, run_id)["method"] == "umap"
    np.testing.assert_array_equal(maps[0], maps[1])
    assert not np.array_equal(maps[0], maps[2])


def test_embed_commits_each_batch_and_resumes_where_it_stopped(run, monkeypatch, capsys):
    _, _, db, run_id = run
    embed(db, "--splits", "train", "--no-map")
    S = sessions(db)
    with S.begin() as s:
        train_ids = select(ImageRow.id).where(ImageRow.split == "train")
        s.execute(delete(FeatureVector).where(FeatureVector.image_id.in_(train_ids)))
    real, calls = store.put_vectors, []

    def dies_on_the_third_batch(session, run_id_, rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(session, run_id_, rows)

    monkeypatch.setattr(store, "put_vectors", dies_on_the_third_batch)
    assert embed(db, "--splits", "train") == 130
    monkeypatch.setattr(store, "put_vectors", real)
    with S() as s:
        assert embed_queries.vector_counts(s, run_id)["train"] == 8  # two batches of 4 were committed
    assert embed(db, "--splits", "train") == 0
    assert "5 vectors computed, 8 already stored" in capsys.readouterr().out
    with S() as s:
        assert embed_queries.vector_counts(s, run_id)["train"] == 13


def test_embed_through_the_decoded_cache_stores_the_vectors_of_the_jpeg_files(run, tmp_path, capsys):
    """The cache path reads exactly the tensors of the JPEG files, for a whole split and for a few images of one."""
    _, _, db, run_id = run
    embed(db, "--splits", "train", "--no-map")
    S = sessions(db)
    with S() as s:
        rows = s.execute(select(ImageRow.id, ImageRow.split).where(ImageRow.run_id == run_id)
                         .order_by(ImageRow.id)).all()
        trained = dict(s.execute(select(FeatureVector.image_id, FeatureVector.data)).all())
    valid = [i for i, sp in rows if sp == "valid"]
    redo = [i for i, sp in rows if sp == "train"] + valid[1::4]  # all of train, two images of valid

    def recompute(*flags):
        with S.begin() as s:
            s.execute(delete(FeatureVector).where(FeatureVector.image_id.in_(redo)))
        assert embed(db, "--no-map", *flags) == 0
        assert f"{len(redo)} vectors computed" in capsys.readouterr().out
        with S() as s:
            return dict(s.execute(select(FeatureVector.image_id, FeatureVector.data)
                                  .where(FeatureVector.image_id.in_(redo))).all())

    jpeg = recompute("--no-cache", "--cache-dir", str(tmp_path / "unused"))
    cached = recompute("--cache-dir", str(tmp_path / "cache"))
    assert len(redo) == 13 + 2 and set(cached) == set(redo)
    assert cached == jpeg  # the same float16 bytes
    assert not (tmp_path / "unused").exists()
    written = sorted(p.parent.name.split("-")[1] for p in (tmp_path / "cache").glob("*/index.json"))
    assert written == ["train", "valid"]
    # and the valid images' vectors are those training stored from its own evaluation pass
    again = np.stack([np.frombuffer(cached[i], "<f2") for i in valid[1::4]]).astype(np.float32)
    before = np.stack([np.frombuffer(trained[i], "<f2") for i in valid[1::4]]).astype(np.float32)
    np.testing.assert_allclose(again, before, rtol=2e-3, atol=2e-3)


def test_similar_finds_the_planted_copy_at_similarity_one(run, capsys):
    _, _, db, _ = run
    embed(db, "--splits", "train")
    capsys.readouterr()
    assert similar(db, "--image", ORIGINAL, "--k", "3", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    top = out["neighbours"][0]
    assert (top["relpath"], top["split"], top["label_name"], top["pred"]) == (COPY, "train", "beta", None)
    assert top["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert len(out["neighbours"]) == 3 and all(n["split"] == "train" for n in out["neighbours"])
    sims = [n["similarity"] for n in out["neighbours"]]
    assert sims == sorted(sims, reverse=True)
    assert out["image"]["relpath"] == ORIGINAL and out["image"]["pred_name"] is not None
    names = ["alpha", "beta", "gamma"]
    assert out["summary"] == describe_neighbour_labels([n["label"] for n in out["neighbours"]], out["image"]["pred"],
                                                       names, pool="training")
    # and the other way round: the copy's nearest validation image is the original
    assert similar(db, "--image", COPY, "--split", "valid", "--k", "2") == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("run 1 (embed run): the 2 nearest valid images of train/beta/copy.jpg (train, "
                               "labelled beta, no prediction)")
    assert "similarity" in lines[1] and "prediction" in lines[1] and lines[2].split()[-1] == ORIGINAL
    assert float(lines[2].split()[1]) == pytest.approx(1.0, abs=1e-3)
    assert "the query took" in lines[-1]


def test_similar_bad_input_is_one_line(run, tmp_path, capsys):
    _, _, db, _ = run
    assert similar(db, "--image", "train/alpha/nothing.jpg") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run 1 (embed run) has no image 'train/alpha/nothing.jpg'") and "\n" not in err
    assert similar(db, "--image", ORIGINAL, "--split", "holdout") == 2
    assert "--split must be 'all' or splits among train, valid, test, got 'holdout'" in capsys.readouterr().err
    assert similar(db, "--image", ORIGINAL, "--k", "0") == 2
    assert "--k must be at least 1, got 0" in capsys.readouterr().err
    url, run_id, _ = build_store(tmp_path, n_classes=3, n_per_class=2, splits=("valid",))
    assert run_cli(similar_job.main, similar_job.get_args_parser(),
                   ["--db", url, "--run", str(run_id), "--image", "valid/archery/001.jpg"]) == 2
    err = capsys.readouterr().err
    assert "has no feature vector; compute them with 'python -m jobs.embed --run 1'" in err


def test_embed_of_an_unknown_split_is_one_line(run, capsys):
    _, _, db, _ = run
    assert embed(db, "--splits", "test") == 2
    assert capsys.readouterr().err.strip() == ("error: run 1 (embed run) has no images in split(s) test; it has "
                                               "train, valid")


@pytest.mark.slow
def test_embed_under_torchrun_writes_each_vector_once(run):
    from tests.test_distributed import torchrun

    _, data, db, run_id = run
    embed(db, "--splits", "train", "--no-map")
    S = sessions(db)
    with S() as s:
        before = embed_queries.stored_vectors(s, run_id, splits=["train"])
    with S.begin() as s:
        train_ids = select(ImageRow.id).where(ImageRow.split == "train")
        s.execute(delete(FeatureVector).where(FeatureVector.image_id.in_(train_ids)))
    broken = data / "train" / "gamma" / "002.jpg"
    saved = broken.read_bytes()
    broken.write_bytes(saved[:40])  # readable header, no image: only the rank that decodes it finds out
    try:
        # 13 training images in batches of 2 over 2 ranks: shards of 7 and 6, so rank 1 has a step less
        torchrun("jobs.embed", "--run-id", str(run_id), "--db", db, "--splits", "train", *EMBED[:2], "--batch-size",
                 "2", "--method", "pca", "--device", "cpu")
    finally:
        broken.write_bytes(saved)
    with S() as s:
        after = embed_queries.stored_vectors(s, run_id, splits=["train"])
    assert len(after) == 12 and "train/gamma/002.jpg" not in set(after.images["relpath"])
    same = before.images["image_id"].isin(after.images["image_id"]).to_numpy()
    np.testing.assert_allclose(after.vectors, before.vectors[same], rtol=2e-3, atol=2e-3)
    embed(db, "--splits", "train", "--no-map")  # leaves the vectors complete for the tests after this one


# --------------------------------------------------------------------------- the data audit's signal

@pytest.fixture
def planted(tmp_path):
    url, run_id, _ = build_store(tmp_path, n_classes=5, n_per_class={"train": 8, "valid": 2, "test": 2},
                                 splits=("train", "valid", "test"))
    return url, run_id, add_embedding(url, run_id)


def test_audit_lists_neighbour_label_suspects_with_evidence(planted):
    url, run_id, ids = planted
    with sessions(url).begin() as s:
        _, report, acc = audit_run(s, run_id)
    found = {r["image_id"]: r for r in report["neighbour_suspects"]}
    flipped = found[ids["flipped"]]
    assert (flipped["label"], flipped["majority_label"]) == (0, 1) and flipped["share"] >= 0.7
    assert flipped["k"] == 10 and sum(flipped["label_counts"].values()) == 10
    assert [n["label"] for n in flipped["neighbours"]].count(1) == flipped["majority_count"]
    assert flipped["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    # the exact copy (another label) is a suspect whose nearest image is its original, at similarity 1
    copy = found[ids["copy"]]
    assert copy["neighbours"][0]["image_id"] == ids["original"]
    assert copy["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert report["neighbour_audit"]["n_vectors"] == 60
    flags = flags_from_report(report).set_index("image_id")
    assert "neighbours" in flags.loc[ids["flipped"], "flags"]
    assert flags.loc[ids["flipped"], "note"].endswith("; 10 of 10 nearest images labelled ampute football")
    summary = format_summary(run_id, report, acc)
    assert f"suspect labels by their nearest neighbours: {len(found)}" in summary
    with sessions(url)() as s:
        assert queries.audit_report(s, run_id)["neighbour_suspects"] == report["neighbour_suspects"]


def test_exact_copies_are_each_others_nearest_neighbour(planted):
    from core.lookalikes import neighbours_table
    from jobs.vectors import load_index

    url, run_id, ids = planted
    with sessions(url)() as s:
        stored, index = load_index(s, run_id)
    there = neighbours_table(stored.images, index, ids["original"], k=2)
    back = neighbours_table(stored.images, index, ids["copy"], k=2)
    assert there["image_id"].iat[0] == ids["copy"] and back["image_id"].iat[0] == ids["original"]
    assert there["similarity"].iat[0] == pytest.approx(1.0, abs=1e-6) == back["similarity"].iat[0]
    assert there["similarity"].iat[1] < 0.999


def test_audit_without_vectors_says_how_to_get_them(tmp_path):
    url, run_id, _ = build_store(tmp_path, n_classes=3, n_per_class=2)
    with sessions(url).begin() as s:
        _, report, acc = audit_run(s, run_id)
    assert report["neighbour_suspects"] == [] and report["neighbour_audit"] is None
    assert "(no feature vectors: python -m jobs.embed --run 1)" in format_summary(run_id, report, acc)


def test_put_vectors_replaces_and_checks_sizes(tmp_path):
    url, run_id, _ = build_store(tmp_path, n_classes=2, n_per_class=1, splits=("valid",))
    S = sessions(url)
    with S.begin() as s:
        store.put_vectors(s, run_id, [dict(image_id=1, dim=2, data=np.array([1, 2], "<f2").tobytes())])
        store.put_vectors(s, run_id, [dict(image_id=1, dim=2, data=np.array([3, 4], "<f2").tobytes())])
    with S() as s:
        got = embed_queries.stored_vectors(s, run_id)
    np.testing.assert_array_equal(got.vectors, [[3, 4]])
    with S.begin() as s, pytest.raises(ValueError, match="vector of image 2: 3 bytes for dim 2, expected 4"):
        store.put_vectors(s, run_id, [dict(image_id=2, dim=2, data=b"abc")])
    with S.begin() as s, pytest.raises(ValueError, match="one \\(x, y\\) per image: 2 images, 1 points"):
        store.replace_map(s, run_id, [1, 2], [(0.0, 0.0)], method="pca", seed=0, params={}, seconds=0.0)
    with S() as s:
        assert s.scalar(select(func.count()).select_from(MapPoint)) == 0
