"""Feature vectors, exact cosine neighbours, the 2-D projection, the neighbour-label audit and the map figure."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.figures_map import COLOR_BY, embedding_scatter
from core.neighbours import (
    NeighbourIndex,
    decode_vector,
    decode_vectors,
    describe_neighbour_labels,
    encode_vector,
    neighbour_label_suspects,
    top_k,
)
from core.projection import knn_graph, pca, project_2d


def _brute(vectors, queries, k, allowed=None, exclude=None):
    u = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = (q.astype(np.float64) @ u.T.astype(np.float64))
    if allowed is not None:
        sims[:, ~allowed] = -np.inf
    if exclude is not None:
        sims[np.arange(len(q)), exclude] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k], np.sort(sims, axis=1)[:, ::-1][:, :k]


def _clusters(n, dim, classes, rng, spread=0.3):
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


# ------------------------------------------------------------------------------------------ search
@pytest.mark.parametrize("n,dim", [(300, 16), (5000, 64)])  # 5000 rows take the chunked top-k path
def test_exact_search_equals_brute_force(n, dim):
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    queries = rng.normal(size=(40, dim)).astype(np.float32)
    rows, sims = NeighbourIndex(vectors).search(queries, k=10)
    want_rows, want_sims = _brute(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, want_rows)])
    assert recall == 1.0
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)


@pytest.mark.parametrize("n", [200, 4000])
def test_among_restricts_candidates_and_the_query_is_excluded(n):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    train = rng.random(n) < 0.5
    index = NeighbourIndex(vectors)
    queries = np.flatnonzero(train)[:20]
    rows, sims = index.neighbours_of(queries, k=7, among=train)
    assert train[rows].all() and not (rows == queries[:, None]).any()
    want, _ = _brute(vectors, vectors[queries], 7, allowed=train, exclude=queries)
    np.testing.assert_array_equal(rows, want)
    # row indices select the same candidates as the mask
    rows2, _ = index.neighbours_of(queries, k=7, among=np.flatnonzero(train))
    np.testing.assert_array_equal(rows, rows2)


def test_exact_copies_are_mutual_nearest_neighbours_at_similarity_one():
    rng = np.random.default_rng(2)
    vectors = rng.random(size=(500, 32)).astype(np.float32)
    vectors[400] = vectors[17]
    vectors[401] = vectors[250] * 3.0  # same direction, other length: cosine 1 as well
    rows, sims = NeighbourIndex(vectors).neighbours_of([17, 400, 250, 401], k=3)
    assert rows[:, 0].tolist() == [400, 17, 401, 250]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-6)
    assert (sims[:, 1] < 0.999).all()


def test_k_beyond_the_candidates_and_zero_vectors():
    vectors = np.array([[1, 0], [0, 0], [0, 1], [1, 1]], dtype=np.float32)
    index = NeighbourIndex(vectors)
    rows, sims = index.neighbours_of([0], k=10, among=np.array([True, True, False, False]))
    assert rows.tolist() == [[1]] and sims.tolist() == [[0.0]]  # the zero vector: similarity 0, no NaN
    rows, sims = index.neighbours_of([1], k=10)
    assert rows.shape == (1, 3) and np.isfinite(sims).all() and (sims == 0).all()
    assert index.search(vectors[:2], k=2, among=np.zeros(4, bool))[0].shape == (2, 0)


@pytest.mark.parametrize("n", [50, 6000])
def test_top_k_breaks_ties_by_index(n):
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(30, n)).astype(np.float32)  # many ties
    idx, val = top_k(scores, 12)
    want = np.lexsort((np.tile(np.arange(n), (30, 1)), -scores), axis=1)[:, :12]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(val, np.take_along_axis(scores, want, 1))


def test_search_rejects_bad_input():
    index = NeighbourIndex(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"queries must have shape \(Q, 4\)"):
        index.search(np.ones((2, 3)), k=2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.ones(4), k=0)
    with pytest.raises(ValueError, match="among as a mask must have shape"):
        index.search(np.ones(4), among=np.ones(3, bool))
    with pytest.raises(ValueError, match="rows must lie in"):
        index.neighbours_of([5])
    with pytest.raises(ValueError, match="finite"):
        NeighbourIndex(np.full((2, 2), np.nan))


# ------------------------------------------------------------------------------------------ storage
def test_vector_bytes_round_trip_and_checks():
    v = np.linspace(0, 40, 256).astype(np.float32)
    data = encode_vector(v)
    assert len(data) == 512
    np.testing.assert_allclose(decode_vector(data, 256), v, rtol=1e-3)
    many = decode_vectors([data, encode_vector(v * 2)], 256)
    assert many.shape == (2, 256) and many.dtype == np.float32
    with pytest.raises(ValueError, match="must be 512 bytes, got 510"):
        decode_vector(data[:-2], 256)
    with pytest.raises(ValueError, match="vector 1: .* got 2"):
        decode_vectors([data, b"ab"], 256)
    with pytest.raises(ValueError, match="fit float16"):
        encode_vector(np.array([1e6], np.float32))
    with pytest.raises(ValueError, match="non-empty float array"):
        encode_vector(np.ones((2, 2), np.float32))


# ------------------------------------------------------------------------------------------ audit signal
def test_neighbour_label_suspects_finds_flipped_labels_with_evidence():
    rng = np.random.default_rng(4)
    vectors, labels = _clusters(600, 16, 4, rng)
    flipped = np.array([5, 50, 123, 321])
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 4
    out = neighbour_label_suspects(vectors, given, k=10, min_share=0.7)
    assert set(out["index"]) == set(flipped.tolist())
    row = out.set_index("index").loc[123]
    assert row["majority_label"] == labels[123] and row["label"] == given[123]
    assert row["share"] >= 0.7 and row["k"] == 10 and sum(row["label_counts"].values()) == 10
    assert row["label_counts"][int(labels[123])] == row["majority_count"]
    assert 123 not in row["neighbours"] and len(row["neighbours"]) == 10
    assert out["share"].is_monotonic_decreasing


def test_neighbour_label_suspects_draw_neighbours_from_the_reference_only():
    rng = np.random.default_rng(5)
    vectors, labels = _clusters(400, 8, 3, rng)
    train = np.arange(400) < 300
    given = labels.copy()
    given[350] = (labels[350] + 1) % 3  # a test image, checked against training images
    out = neighbour_label_suspects(vectors, given, among=train, rows=np.arange(300, 400))
    assert out["index"].tolist() == [350]
    assert all(n < 300 for n in out.loc[0, "neighbours"])
    empty = neighbour_label_suspects(vectors, given, rows=[])
    assert list(empty.columns) == list(out.columns) and empty.empty


def test_describe_neighbour_labels_sentences():
    names = ["archery", "nascar racing", "rowing"]
    assert describe_neighbour_labels([1] * 7 + [2] * 3, 1, names) == \
        "7 of its 10 nearest training images are labelled nascar racing"
    assert describe_neighbour_labels([1, 2, 2], 1, names, markdown=True) == \
        "1 of its 3 nearest training images is labelled *nascar racing*"
    assert describe_neighbour_labels([0, 0], 1, names).startswith("None of its 2 nearest")
    assert describe_neighbour_labels([2], 2, names) == "Its nearest training image is labelled rowing"
    with pytest.raises(ValueError, match="label must be a class index"):
        describe_neighbour_labels([0], 3, names)


# ------------------------------------------------------------------------------------------ projection
def test_knn_graph_is_exact_and_starts_with_self():
    rng = np.random.default_rng(6)
    p = rng.normal(size=(3000, 5)).astype(np.float32)
    idx, dist = knn_graph(p, 6)
    d2 = ((p[:50, None, :] - p[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx[:50], np.argsort(d2, axis=1, kind="stable")[:, :6])
    np.testing.assert_allclose(dist[:50], np.sqrt(np.sort(d2, axis=1)[:, :6]), atol=1e-3)


@pytest.mark.parametrize("vectors", [
    np.ones((40, 256), np.float32),  # constant
    np.random.default_rng(7).random((3, 256)).astype(np.float32),  # a run of 3 images
    np.zeros((5, 256), np.float32),  # no feature on at all
    np.random.default_rng(8).random((1, 256)).astype(np.float32),
], ids=["constant", "three", "zeros", "one"])
def test_small_and_degenerate_inputs_give_a_finite_pca_map(vectors):
    proj = project_2d(vectors, seed=0)
    assert proj.method == "pca" and "fallback" in proj.params
    assert proj.xy.shape == (len(vectors), 2) and proj.xy.dtype == np.float32
    assert np.isfinite(proj.xy).all() and np.abs(proj.xy).max() <= 1.0
    if len(np.unique(vectors, axis=0)) == 1:
        assert (proj.xy == 0).all()
    assert project_2d(np.empty((0, 256), np.float32)).xy.shape == (0, 2)


def test_pca_map_is_deterministic_and_signed():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(100, 20))
    a, b = pca(x, 3), pca(x[:, :].copy(), 3)
    np.testing.assert_array_equal(a, b)
    assert np.allclose(a.mean(axis=0), 0, atol=1e-5)
    assert a[:, 0].var() >= a[:, 1].var() >= a[:, 2].var()


def test_project_2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method must be one of"):
        project_2d(np.ones((3, 2)), method="tsne")
    with pytest.raises(ValueError, match="UMAP needs at least 16 vectors"):
        project_2d(np.random.default_rng(0).random((5, 4)), method="umap")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        project_2d(np.ones((3, 2)), seed=-1)


@pytest.mark.slow  # numba compiles UMAP's layout on its first call in a process: ~10 s
def test_umap_map_is_reproducible_for_a_seed_and_keeps_clusters_apart():
    rng = np.random.default_rng(10)
    vectors, labels = _clusters(240, 64, 3, rng, spread=0.2)
    vectors[200:220] = vectors[0]  # many exact copies must not break the layout
    labels[200:220] = labels[0]
    a = project_2d(vectors, seed=3)
    b = project_2d(vectors, seed=3)
    assert a.method == "umap" and a.params["pca_dims"] == 50
    np.testing.assert_array_equal(a.xy, b.xy)
    assert np.isfinite(a.xy).all()
    centres = np.stack([a.xy[labels == c].mean(axis=0) for c in range(3)])
    within = max(np.linalg.norm(a.xy[labels == c] - centres[c], axis=1).mean() for c in range(3))
    between = min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3))
    assert between > 2 * within


# ------------------------------------------------------------------------------------------ model features
@pytest.fixture(scope="module")
def tiny_model():
    torch = pytest.importorskip("torch")
    from core.model import SportsVGG

    torch.manual_seed(0)
    return SportsVGG(5).eval()


def test_features_shape_dtype_and_one_forward_logits(tiny_model):
    import torch

    from core.embed import FeatureTap, feature_dim, features, logits_and_features

    x = torch.randn(5, 3, 32, 32)
    before = x.clone()
    tiny_model.train()
    vecs = features(tiny_model, x, batch_size=2)
    assert tiny_model.training  # mode restored
    assert vecs.shape == (5, 256) == (5, feature_dim(tiny_model)) and vecs.dtype == np.float32
    assert (vecs >= 0).all() and torch.equal(x, before)
    tiny_model.eval()
    with torch.inference_mode():
        logits, f = logits_and_features(tiny_model, x)
        ref = tiny_model(x)
    torch.testing.assert_close(logits, ref)
    np.testing.assert_allclose(f.numpy(), vecs, rtol=1e-5, atol=1e-6)
    with FeatureTap(tiny_model) as tap, torch.inference_mode():
        tiny_model(x[:3])
        np.testing.assert_allclose(tap.take(), vecs[:3], rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match="no forward ran"):
            tap.take()
    assert not tiny_model.pool._forward_hooks  # released
    assert features(tiny_model, x[:0]).shape == (0, 256)


def test_feature_tap_collects_the_grad_cam_forward(tiny_model):
    import torch

    from core.embed import FeatureTap, features
    from core.gradcam import predict_and_explain

    x = torch.randn(3, 3, 32, 32)
    with FeatureTap(tiny_model) as tap:
        predict_and_explain(tiny_model, x, [0, 1, 2])
        got = tap.take()
    np.testing.assert_allclose(got, features(tiny_model, x), rtol=1e-5, atol=1e-6)


def test_features_rejects_other_inputs(tiny_model):
    import torch

    from core.embed import features

    with pytest.raises(ValueError, match=r"float tensor \(N, 3, H, W\)"):
        features(tiny_model, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="has no features, reduce, pool, classifier"):
        features(torch.nn.Linear(2, 2), torch.zeros(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------ figure
def _points(n, rng, classes=6):
    labels = rng.integers(0, classes, n)
    pred = np.where(rng.random(n) < 0.8, labels, rng.integers(0, classes, n))
    return pd.DataFrame({
        "x": rng.normal(size=n), "y": rng.normal(size=n), "label": labels, "pred": pred,
        "confidence": rng.random(n), "split": rng.choice(["train", "valid", "test"], n),
        "flag": rng.choice(["", "", "", "suspect label", "duplicate"], n), "image_id": np.arange(n) + 1000,
    })


@pytest.mark.parametrize("color_by", COLOR_BY)
def test_map_figure_holds_every_point_once_with_its_image_id(color_by):
    names = [f"class <{i}>" for i in range(6)]
    pts = _points(500, np.random.default_rng(11))
    fig = embedding_scatter(pts, names, color_by=color_by)
    assert all(t.type == "scattergl" for t in fig.data)
    ids = np.concatenate([np.asarray(t.customdata) for t in fig.data])
    assert sorted(ids.tolist()) == pts["image_id"].tolist()
    # a point's hover names its true class (escaped), in the trace template or its own text
    t = fig.data[0]
    first = pts.set_index("image_id").loc[int(t.customdata[0])]
    shown = t.hovertemplate + (t.text[0] if t.text is not None else "")
    assert f"class &lt;{first['label']}&gt;" in shown
    json.loads(fig.to_json())


def test_map_figure_highlight_dims_other_classes():
    pts = _points(300, np.random.default_rng(12))
    fig = embedding_scatter(pts, [str(i) for i in range(6)], color_by="correct", highlight=2)
    for t in fig.data:
        labels = pts.set_index("image_id").loc[np.asarray(t.customdata), "label"].to_numpy()
        np.testing.assert_array_equal(np.asarray(t.marker.opacity) == 1.0, labels == 2)
    assert "highlighted: 2" in fig.layout.title.text


def test_map_figure_input_checks_and_empty_selection():
    pts = _points(20, np.random.default_rng(13))
    with pytest.raises(ValueError, match="lack column.*flag"):
        embedding_scatter(pts.drop(columns="flag"), [str(i) for i in range(6)], color_by="audit")
    with pytest.raises(ValueError, match=r"points.label must be class indices in \[0, 3\)"):
        embedding_scatter(pts, ["a", "b", "c"])
    with pytest.raises(ValueError, match="color_by must be one of"):
        embedding_scatter(pts, [str(i) for i in range(6)], color_by="size")
    empty = embedding_scatter(pts.iloc[:0], [str(i) for i in range(6)])
    assert len(empty.data) == 0 and empty.layout.annotations[0].text == "no points to show"
