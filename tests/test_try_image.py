"""Trying images with a run's own model: the page's prediction and maps equal what the run stored, bad
uploads get one line each and nothing is written to disk, the page under AppTest, and ``jobs.explain``."""
from __future__ import annotations

import functools
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import delete, update
from streamlit.testing.v1 import AppTest

from core.cammaps import DEFAULT_METHOD, GRADIENT_METHODS
from core.images import open_rgb
from core.tryout import (PICKED, SCALES, TOP1, NoCheckpoint, bundle, calibrated_probs, decode_image,
                         find_checkpoint, overlays, result_record, result_sheet, scale_of)
from dashboard import try_ui
from dashboard.tiles import map_of_class
from db import queries, store
from db.models import CalibrationRow, FeatureVector, Run
from db.queries.calibration import calibration_for
from db.queries.embed import stored_vectors
from jobs import explain as explain_job
from jobs import train as train_job
from tests.conftest import make_dataset
from tests.storefactory import build_store

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / "dashboard" / "Home.py"
PAGE = "views/try_image.py"
# As tests/test_train.py, with the CAM layer at 4x4 (features.26 at 32 px) so that a map has 16 cells to correlate.
TINY = ["--image-size", "32", "--epochs-frozen", "1", "--epochs-finetune", "1", "--batch-size", "4",
        "--workers", "0", "--weights", "none", "--device", "cpu", "--cam-layer", "features.26"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny trained run: (store url, RunInfo, data root)."""
    tmp = tmp_path_factory.mktemp("try")
    data = make_dataset(tmp / "data", per_split={"train": 4, "valid": 4}, size=40)
    url = f"sqlite:///{tmp / 'store.db'}"
    args = train_job.get_args_parser().parse_args(
        ["--data", str(data), "--db", url, "--out", str(tmp / "ck"), "--run-name", "tiny", *TINY])
    assert train_job.main(args) == 0
    with session(url) as s:
        info = queries.find_run(s, "latest")
    return url, info, data


@pytest.fixture(scope="module")
def predictor(tiny):
    """The tiny run's model, loaded as the page loads it (and cached by it for the whole module)."""
    _, info, _ = tiny
    return try_ui._load(info.checkpoint_path, os.stat(info.checkpoint_path).st_mtime, info.cam_layer)


def session(url):
    return store.make_sessionmaker(store.make_engine(url, create=False))()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b, atol=1e-3) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@dataclass
class Upload:
    """What the page reads of a Streamlit ``UploadedFile``: its name and its bytes."""

    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def noisy(size=(60, 40), mode="RGB") -> Image.Image:
    arr = np.random.default_rng(1).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


# --------------------------------------------------------------------------- correctness against the store

def test_prediction_and_maps_equal_what_the_run_stored(tiny, predictor):
    url, info, data = tiny
    with session(url) as s:
        preds = queries.predictions_frame(s, info.id)
        methods = [m for m in info.cam_methods if m in GRADIENT_METHODS]  # every one the run stored
        stored = {m: queries.maps_for(s, info.id, preds["image_id"], m) for m in methods}
        details = {int(i): queries.image_detail(s, info.id, int(i)) for i in preds["image_id"]}
        vectors = stored_vectors(s, info.id)
    model = predictor.predictor
    assert len(preds) == 12 and model.layer == "features.26" and methods == list(GRADIENT_METHODS)
    vector_of = dict(zip(vectors.images["image_id"], vectors.vectors))
    assert Path(predictor.path) == find_checkpoint(info.checkpoint_path, info.config, "run")
    for label, rows in preds.groupby("label"):
        rows = list(rows.itertuples())
        # The page's two ways in: a file of the run's data, and the same file uploaded.
        from_data = [try_ui.data_item(str(data), r.relpath).image for r in rows]
        for r, img in zip(rows, from_data):
            uploaded = decode_image((data / r.relpath).read_bytes(), r.relpath, 10_000_000, model.image_size)
            assert np.array_equal(np.asarray(img), np.asarray(open_rgb(data / r.relpath)))
            assert np.array_equal(np.asarray(uploaded), np.asarray(img))
        results = model.predict(from_data, [r.relpath for r in rows], methods=methods, picked=int(label))
        for r, res in zip(rows, results):
            d = details[int(r.image_id)]
            assert res.top_idx[0] == r.pred == d.pred
            assert res.top_idx == list(d.top5_idx)
            assert np.abs(np.array(res.top_prob) - np.array(d.top5_prob)).max() <= 1e-3
            for m in methods:
                assert pearson(res.maps[m][TOP1], stored[m][int(r.image_id)].get("pred")) >= 0.999, m
                true_map = map_of_class(stored[m][int(r.image_id)], int(r.label))
                assert pearson(res.maps[m][PICKED], true_map) >= 0.999, m
            v = vector_of[int(r.image_id)]  # the vector the run stored (float16) for the nearest images
            assert float(res.features @ v / np.linalg.norm(res.features) / np.linalg.norm(v)) >= 0.999


def test_every_gradient_method_gives_a_map_of_both_classes(tiny, predictor):
    url, info, data = tiny
    imgs = [open_rgb(p) for p in sorted((data / "valid").rglob("*.jpg"))[:3]]
    results = predictor.predictor.predict(imgs, ["a", "b", "c"], picked=2)
    for r in results:
        assert set(r.maps) == set(GRADIENT_METHODS)
        for m in GRADIENT_METHODS:
            assert r.maps[m][TOP1].shape == r.maps[m][PICKED].shape == (4, 4)
            assert np.isfinite(r.maps[m][TOP1]).all() and (r.maps[m][TOP1] >= 0).all()
        assert abs(float(r.probs.sum()) - 1) < 1e-5 and r.picked == 2


# --------------------------------------------------------------------------- uploads

BAD = {
    "text.jpg": (b"this is a text file, not a photo\n" * 20, "not an image PIL can read"),
    "empty.jpg": (b"", "empty file (0 bytes)"),
    "big.jpg": (b"\xff\xd8" + b"x" * 2_100_000, "over the upload limit of 2 MB"),
}


@functools.lru_cache(maxsize=1)
def bomb() -> bytes:
    """A 20,000 x 20,000 px PNG of one colour: a small file that would take 1.2 GB to decode."""
    return encoded(Image.new("1", (20_000, 20_000)), "PNG")


def bad_uploads() -> list[Upload]:
    out = [Upload(name, data) for name, (data, _) in BAD.items()]
    whole = encoded(noisy((200, 200)), "JPEG", quality=95)
    out.append(Upload("cut.jpg", whole[: len(whole) // 2]))
    out.append(Upload("bomb.png", bomb()))
    return out


def test_each_bad_upload_gets_one_line_naming_it():
    items = try_ui.upload_items(bad_uploads(), 32, max_bytes=2_000_000)
    assert [it.name for it in items] == ["text.jpg", "empty.jpg", "big.jpg", "cut.jpg", "bomb.png"]
    assert all(it.image is None and it.error and "\n" not in it.error for it in items)
    for it in items:
        assert it.error.startswith(f"{it.name}: ")
    for it, (_, expected) in zip(items, BAD.values()):
        assert expected in it.error
    assert "cannot decode image" in items[3].error
    assert "too large to decode safely" in items[4].error


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("L", "JPEG"), ("RGBA", "PNG"), ("RGB", "WEBP")])
def test_odd_colour_modes_are_tried_as_rgb(mode, fmt):
    (it,) = try_ui.upload_items([Upload(f"x.{fmt.lower()}", encoded(noisy(mode=mode), fmt))], 32, max_bytes=10**7)
    assert it.error is None and it.image.mode == "RGB" and it.image.size == (60, 40)


def test_a_10000_px_photo_is_resized_not_refused():
    data = encoded(Image.new("RGB", (10_000, 10_000), (200, 40, 40)), "JPEG", quality=70)
    (it,) = try_ui.upload_items([Upload("huge.jpg", data)], 224, max_bytes=20_000_000)
    assert it.error is None
    assert 224 <= min(it.image.size) <= 10_000 // 4  # decoded at a reduced JPEG scale, still >= the input size
    assert abs(np.asarray(it.image)[5, 5].astype(int) - (200, 40, 40)).max() < 12


def test_uploads_are_never_written_to_disk(tiny, predictor, tmp_path, monkeypatch):
    url, info, data = tiny
    monkeypatch.chdir(tmp_path)

    def files(root: Path) -> dict:
        return {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    before_data, before_cwd = files(data), files(tmp_path)
    loaded = predictor
    uploads = [Upload("mine.png", encoded(noisy(), "PNG")), *bad_uploads()]
    items = try_ui.upload_items(uploads, loaded.predictor.image_size, max_bytes=2_000_000)
    results = try_ui.predict(loaded, items, ["gradcam"], None)
    assert list(results) == [items[0].key]
    assert files(data) == before_data and files(tmp_path) == before_cwd


def test_predictions_are_kept_per_session_and_bounded(predictor):
    loaded = predictor
    items = try_ui.upload_items([Upload(f"{k}.png", encoded(noisy((30 + k, 30)), "PNG"))
                                 for k in range(try_ui.KEPT_RESULTS + 3)], 32, max_bytes=10**7)
    first = try_ui.predict(loaded, items[:2], ["gradcam"], None)
    again = try_ui.predict(loaded, items[:2], ["gradcam"], None)
    assert all(first[k] is again[k] for k in first)  # the same objects: not computed twice
    try_ui.predict(loaded, items, ["gradcam"], None)
    assert len(try_ui.st.session_state[try_ui.RESULTS_KEY]) == try_ui.KEPT_RESULTS


# --------------------------------------------------------------------------- the checkpoint

def test_find_checkpoint_falls_back_to_best_beside_it(tmp_path):
    best = tmp_path / "run" / "best.pt"
    best.parent.mkdir()
    best.write_bytes(b"x")
    assert find_checkpoint(str(tmp_path / "run" / "last.pt"), {}, "run 1") == best
    assert find_checkpoint(None, {"run_dir": str(best.parent)}, "run 1") == best
    with pytest.raises(NoCheckpoint, match="run 1 records no checkpoint"):
        find_checkpoint(None, {}, "run 1")
    with pytest.raises(NoCheckpoint, match=r"run 1: its checkpoint .*gone\.pt is gone"):
        find_checkpoint(str(tmp_path / "elsewhere" / "gone.pt"), {}, "run 1")


def copied_store(tiny, tmp_path, *statements) -> str:
    """A copy of the tiny run's store with ``statements`` executed on it."""
    url, info, _ = tiny
    copy = tmp_path / "copy.db"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)  # the store may keep recent writes in its write-ahead log: copy through SQLite
    new = f"sqlite:///{copy}"
    with store.make_sessionmaker(store.make_engine(new, create=False)).begin() as s:
        for stmt in statements:
            s.execute(stmt)
    return new


def moved_store(tiny, tmp_path, checkpoint: str) -> str:
    """A copy of the tiny run's store whose checkpoint path is ``checkpoint`` (and no checkpoint folder)."""
    _, info, _ = tiny
    return copied_store(tiny, tmp_path, update(Run).values(checkpoint_path=checkpoint,
                                                            config={**info.config, "run_dir": None}))


# --------------------------------------------------------------------------- the page

def page(url: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("SPORTS_DB", url)
    at = AppTest.from_file(str(HOME), default_timeout=90)
    at.run()
    at.switch_page(PAGE).run()
    return at


def test_page_tries_a_file_of_the_run_data(tiny, monkeypatch):
    url, info, data = tiny
    at = page(url, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Try an image"]
    assert any("up to 20 MB per file" in c.value for c in at.caption)
    assert any("Upload one or more images" in i.value for i in at.info)
    at.selectbox(key="try_sport").set_value("beta").run()
    relpath = at.selectbox(key="try_file").value
    assert relpath.startswith(("train/beta/", "valid/beta/"))
    at.selectbox(key="try_file").set_value("valid/beta/001.jpg").run()
    assert not at.exception and not at.error
    with session(url) as s:
        preds = queries.predictions_frame(s, info.id)
        t = calibration_for(s, info.id).temperature  # the training job calibrates the run at its end
        logits = queries.logits_for(s, info.id, 3)
    stored = preds.loc[preds["relpath"] == "valid/beta/001.jpg"].iloc[0]
    pred = int(stored["pred"])
    cal = calibrated_probs(logits.logits[logits.frame["image_id"] == stored["image_id"]][0], t)
    heads = [m.value for m in at.markdown if m.value.startswith("**valid/beta/001.jpg**")]
    assert heads == [f"**valid/beta/001.jpg** · top-1 **{info.classes[pred]}** at "
                     f"{float(stored['confidence']):.1%} (calibrated {cal[pred]:.1%})"]
    assert any(m.value.startswith("The run stored for this file (valid)") for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["class"])[0] == info.classes[pred] and len(table) == 3
    calibrated = table[f"calibrated (T = {t:.2f})"].to_numpy()
    assert np.abs(calibrated - cal[[info.classes.index(c) for c in table["class"]]]).max() <= 1e-3
    assert any(f"T = {t:.3g}" in c.value for c in at.caption)
    # Its nearest images by stored vectors: the run stored vectors of valid only, so itself comes first.
    assert any("from every split: no training image has a vector yet" in c.value for c in at.caption)
    near = [c.value for c in at.caption if c.value.startswith("**")]
    assert len(near) == 5 and near[0].startswith("**valid** · true: beta") and near[0].endswith("similarity 1.000")
    # A picked class adds a second row of maps; fewer methods, fewer maps.
    at.selectbox(key="try_class").set_value("gamma").run()
    at.multiselect(key="try_methods").set_value(["gradcam", "layercam"]).run()
    assert not at.exception
    captions = [c for img in at.get("image") for c in img.captions]
    assert sum("· top-1" in c for c in captions) == 2 and sum("· gamma" in c for c in captions) == 2
    at.button(key="try_add_0").click().run()
    assert not at.exception
    assert at.session_state[try_ui.COLLECTED_KEY] and len(at.session_state[try_ui.COLLECTED_KEY]) == 1


def test_page_without_a_temperature_shows_raw_probabilities(tiny, tmp_path, monkeypatch):
    at = page(copied_store(tiny, tmp_path, delete(CalibrationRow)), monkeypatch)
    at.selectbox(key="try_sport").set_value("alpha").run()
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value.columns) == ["class", "probability"]
    assert any(c.value.startswith("Raw softmax probabilities: the run has no fitted temperature") for c in at.caption)
    assert not any("(calibrated " in m.value for m in at.markdown)


def test_page_without_vectors_says_how_to_get_neighbours(tiny, tmp_path, monkeypatch):
    url = copied_store(tiny, tmp_path, delete(FeatureVector))
    at = page(url, monkeypatch)
    at.selectbox(key="try_sport").set_value("gamma").run()
    assert not at.exception and not at.error
    (hint,) = [c.value for c in at.caption if "nearest images appear" in c.value]
    assert "`python -m jobs.embed --run 1 --db " in hint
    assert not [c for c in at.caption if c.value.startswith("**")]


def test_page_says_in_one_line_when_the_checkpoint_is_gone(tiny, tmp_path, monkeypatch):
    at = page(moved_store(tiny, tmp_path, str(tmp_path / "nowhere" / "best.pt")), monkeypatch)
    assert not at.exception
    (line,) = [e.value for e in at.error]
    assert "\n" not in line and "nowhere/best.pt is gone" in line
    assert not at.get("file_uploader")


def test_page_says_in_one_line_when_the_checkpoint_is_unreadable(tiny, tmp_path, monkeypatch):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint" * 50)
    at = page(moved_store(tiny, tmp_path, str(junk)), monkeypatch)
    assert not at.exception
    (line,) = [e.value for e in at.error]
    assert "\n" not in line and "cannot load its model" in line and "junk.pt" in line


def test_page_without_a_checkpoint_on_a_generated_store(tmp_path, monkeypatch):
    url, _, _ = build_store(tmp_path, n_classes=5, n_per_class=2, seed=4)
    at = page(url, monkeypatch)
    assert not at.exception
    (line,) = [e.value for e in at.error]
    assert "records no checkpoint" in line and "\n" not in line


def test_pages_other_than_try_do_not_import_torch():
    code = ("import sys, dashboard.loaders, dashboard.state, dashboard.tiles, dashboard.context, dashboard.try_ui, "
            "core.tryout; assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# --------------------------------------------------------------------------- the results as files

def test_record_sheet_and_bundle(tiny, predictor):
    url, info, data = tiny
    imgs = [open_rgb(data / "valid" / "alpha" / "000.jpg"), open_rgb(data / "valid" / "gamma" / "001.jpg")]
    results = predictor.predictor.predict(imgs, ["a.jpg", "g.jpg"], methods=["gradcam", "hirescam"], picked=1)
    rec = result_record(results[0], info.classes, temperature=2.0, source="valid/alpha/000.jpg")
    assert rec["top1"]["class"] == info.classes[results[0].top_idx[0]] and rec["picked"]["class"] == "beta"
    assert rec["methods"] == ["gradcam", "hirescam"] and len(rec["top"]) == 3
    cal = [row["calibrated"] for row in rec["top"]]
    assert abs(sum(cal) - 1) < 1e-4 and max(cal) <= rec["top1"]["probability"] + 1e-6  # T > 1 softens
    assert result_record(results[0], info.classes)["top"][0].keys() == {"rank", "index", "class", "probability"}
    sheet = result_sheet(results, info.classes, title="t")
    assert sheet.mode == "RGB" and sheet.size[0] >= 5 * 150  # model input + 2 methods x 2 classes
    zipped = bundle([rec], sheet, run={"id": info.id, "name": info.name})
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        assert sorted(zf.namelist()) == ["predictions.json", "sheet.png"]
        doc = json.loads(zf.read("predictions.json"))
        assert doc["run"]["id"] == info.id and doc["images"][0]["name"] == "a.jpg"
        assert Image.open(io.BytesIO(zf.read("sheet.png"))).size == sheet.size
    shared = overlays(results[0], TOP1, ["gradcam", "hirescam"], scale=SCALES[1])
    assert [m for m, _ in shared] == ["gradcam", "hirescam"] and shared[0][1].shape == (32, 32, 3)


def test_scale_of_choices():
    cams = [np.array([[0.0, 2.0]]), np.array([[4.0, -1.0]])]
    assert scale_of(SCALES[0], cams) == "image"
    assert scale_of(SCALES[1], cams) == ("fixed", 4.0)
    assert scale_of(SCALES[2], cams) == "none"
    with pytest.raises(ValueError, match="scale must be one of"):
        scale_of("loud", cams)


# --------------------------------------------------------------------------- jobs.explain

def run_explain(*argv: str) -> int:
    parser = explain_job.get_args_parser()
    return explain_job.run_cli(explain_job.main, parser, list(argv))


def test_explain_writes_overlays_and_predictions(tiny, tmp_path, capsys):
    url, info, data = tiny
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(data / "valid" / "alpha" / "000.jpg", folder / "a.jpg")
    shutil.copy(data / "valid" / "gamma" / "001.jpg", folder / "sub" / "a.jpg")  # same stem: a-2
    (folder / "notes.txt").write_text("not an image, and not looked at")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    rc = run_explain(str(folder), str(tmp_path / "missing.png"), "--run", str(info.id), "--db", url, "--out", str(out),
                     "--methods", "gradcam,layercam", "--class", "beta", "--json", "--batch-size", "2")
    assert rc == 0
    captured = capsys.readouterr()
    errs = [ln for ln in captured.err.splitlines() if ln.startswith("skipped ")]
    assert len(errs) == 2 and any("missing.png: no such file" in e for e in errs)
    assert any("broken.jpg: not an image PIL can read" in e for e in errs)
    doc = json.loads(captured.out)
    assert doc == json.loads((out / "predictions.json").read_text())
    assert [Path(r["source"]).name for r in doc["images"]] == ["a.jpg", "a.jpg"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 8 and "a.gradcam.png" in pngs and "a-2.layercam.png" in pngs
    assert any(n.startswith("a.layercam.beta-") for n in pngs)
    with session(url) as s:
        t = calibration_for(s, info.id).temperature
    assert doc["temperature"] == t and all("calibrated" in row for r in doc["images"] for row in r["top"])
    first = doc["images"][0]
    with session(url) as s:
        preds = queries.predictions_frame(s, info.id)
    stored = preds.loc[preds["relpath"] == "valid/alpha/000.jpg"].iloc[0]
    assert first["top1"]["index"] == int(stored["pred"])
    assert abs(first["top1"]["probability"] - float(stored["confidence"])) <= 1e-3
    assert Image.open(out / "a.gradcam.png").size == (32, 32)


def test_explain_with_nothing_readable_is_one_line_and_exit_2(tiny, tmp_path, capsys):
    url, info, _ = tiny
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    rc = run_explain(str(bad), "--run", "latest", "--db", url, "--out", str(tmp_path / "o"))
    err = [ln for ln in capsys.readouterr().err.splitlines() if " INFO " not in ln]  # log lines aside
    assert rc == 2
    assert err[0].startswith("skipped ") and "empty file (0 bytes)" in err[0]
    assert err[-1] == "error: none of the 1 file(s) could be read as an image"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "unknown CAM method 'nope'"),
    (["--class", "delta"], "--class 'delta' is not a class of run"),
])
def test_explain_refuses_bad_flags(tiny, tmp_path, capsys, argv, message):
    url, info, data = tiny
    rc = run_explain(str(data / "valid"), "--run", "latest", "--db", url, "--out", str(tmp_path / "o"), *argv)
    assert rc == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- loading

def test_load_for_inference_refuses_a_checkpoint_missing_weights(tiny, tmp_path):
    # That it loads the very model is shown above: its predictions and maps are those the run stored.
    from core.inference import load_for_inference
    from core.model import CheckpointError, read_checkpoint, save_checkpoint

    _, info, _ = tiny
    model, meta = load_for_inference(info.checkpoint_path)
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    assert meta.class_names == list(info.classes)
    state = read_checkpoint(info.checkpoint_path)
    state["model"].pop(next(iter(state["model"])))
    save_checkpoint(tmp_path / "part.pt", state)
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_for_inference(tmp_path / "part.pt")
