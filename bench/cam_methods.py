"""Do our CAM methods equal pytorch-grad-cam's on real images at the real layer?

    python -m bench.cam_methods --data ../shared/data/sports100-sample [--n 4] [--size 224]
        [--layer features.35] [--scorecam-images 0]

SportsVGG with a random (looks-linear) base and a random head, since the ImageNet weights are not
available offline; the maps' agreement does not need a trained model, only real activations. ``--n``
images of the split, spread over its classes, are explained for the predicted class, the true class and,
where they differ, the contrast pred vs true, by ``predict_and_explain_many`` and by each pytorch-grad-cam
class (one call per target set), compared before the library's per-image scaling (after its ReLU).

Printed per method and target: the maps compared (constant maps are checked for equality instead), the
lowest Pearson correlation and how many maps peak in the same cell. Eigen-CAM is compared signed, before
either ReLU: |Pearson| and how often the library's component has the other sign (see
``core.cam_methods.eigencam_map``). Score-CAM is opt-in (``--scorecam-images K``, predicted class only): it
costs 512 forwards per image at features.35, for each implementation.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from core.cam_methods import SCORECAM_COST, eigencam_map, scorecam_forwards
from core.camlayer import forward_with_tap
from core.cammaps import GRADIENT_METHODS, TARGET_CONTRAST, TARGET_PRED, TARGET_TRUE, TARGETS
from core.data import discover, to_tensor
from core.gradcam import predict_and_explain_many
from core.images import model_pixels, open_rgb
from core.model import SportsVGG, load_imagenet_base

LIBRARY_CLASSES = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "hirescam": "HiResCAM", "eigencam": "EigenCAM", "scorecam": "ScoreCAM",
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder (train/ valid/ test/ or sports.csv)")
    p.add_argument("--split", default="valid", help="split to draw images from (default: valid)")
    p.add_argument("--n", type=int, default=4, help="images compared (default: 4)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default: 224)")
    p.add_argument("--layer", default="features.35", help="CAM layer (default: features.35)")
    p.add_argument("--scorecam-images", type=int, default=0,
                   help=f"compare Score-CAM on this many of the images (default: 0). {SCORECAM_COST}")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    return p


def load_images(data: str, split: str, n: int, size: int):
    index = discover(data)
    if split not in index.splits:
        raise ValueError(f"--split {split}: not in {data} (has {', '.join(index.splits)})")
    samples = index.splits[split]
    picked = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, min(n, len(samples)))]
    x = torch.stack([to_tensor(model_pixels(open_rgb(index.root / s.relpath), size)) for s in picked])
    return x, torch.tensor([s.label for s in picked]), len(index.classes), [s.relpath for s in picked]


def library_raw(method: str, model, layer, x, target_sets) -> np.ndarray:
    """The library's maps (N, K, h, w) as ``get_cam_image`` returns them, before its ReLU and scaling."""
    import pytorch_grad_cam

    class Raw(getattr(pytorch_grad_cam, LIBRARY_CLASSES[method])):
        def get_cam_image(self, *args, **kwargs):
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    out = []
    with Raw(model=model, target_layers=[layer]) as cam:
        cam.batch_size = 32
        for targets in target_sets:
            cam(input_tensor=x, targets=targets)
            out.append(cam.raw)
    model.zero_grad(set_to_none=True)
    return np.stack(out, axis=1)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> str:
    """Pearson min and peak agreement over maps that are not constant; constant ones must be equal."""
    a_all, b_all = ours.reshape(len(ours), -1), theirs.reshape(len(theirs), -1)
    rs, peaks, constant, unequal = [], 0, 0, 0
    for a, b in zip(a_all, b_all):
        if a.std() == 0 or b.std() == 0:
            constant += 1
            unequal += not np.allclose(a, b, atol=1e-5 * max(float(np.abs(b_all).max()), 1e-12))
            continue
        rs.append(np.corrcoef(a, b)[0, 1])
        peaks += a.argmax() == b.argmax()
    text = f"{len(rs):>3} maps  Pearson min {min(rs):.8f}  same peak {peaks}/{len(rs)}" if rs else "no map varies"
    return text + (f"  ({constant} constant, {unequal} unequal)" if constant else "")


def main(args: argparse.Namespace) -> None:
    if args.n < 1 or args.size < 32 or args.scorecam_images < 0 or args.threads < 1:
        raise ValueError(f"need --n >= 1, --size >= 32, --scorecam-images >= 0, --threads >= 1; got --n {args.n}, "
                         f"--size {args.size}, --scorecam-images {args.scorecam_images}, --threads {args.threads}")
    torch.set_num_threads(args.threads)
    x, labels, classes, paths = load_images(args.data, args.split, args.n, args.size)
    torch.manual_seed(args.seed)
    model = SportsVGG(classes)
    load_imagenet_base(model, "none")
    model.eval()
    layer = model.get_submodule(args.layer)
    print(f"{len(x)} images of {args.data} ({args.split}) at {args.size} px, layer {args.layer}, SportsVGG({classes}) "
          f"random; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = predict_and_explain_many(model, x, labels, GRADIENT_METHODS + ("eigencam",), layer=args.layer)
    pred, wrong = out.pred, (out.pred != labels).numpy()
    targets = {
        TARGET_PRED: [ClassifierOutputTarget(int(p)) for p in pred],
        TARGET_TRUE: [ClassifierOutputTarget(int(t)) for t in labels],
        TARGET_CONTRAST: [(lambda o, p=int(p), t=int(t): o[p] - o[t]) for p, t in zip(pred, labels)],
    }
    print(f"predicted {pred.tolist()}, true {labels.tolist()}: {int(wrong.sum())} wrong (contrast maps)")
    for method in GRADIENT_METHODS:
        theirs = np.maximum(library_raw(method, model, layer, x, list(targets.values())), 0)
        ours = out.maps[method].numpy()
        for k, target in enumerate(TARGETS):
            rows = wrong if target == TARGET_CONTRAST else np.ones(len(x), bool)
            if rows.any():
                print(f"{method:<10} {target:<9} {agreement(ours[rows, k], theirs[rows, k])}")

    with torch.no_grad():
        signed = eigencam_map(forward_with_tap(model, args.layer, x)[1].detach()).numpy().reshape(len(x), -1)
    lib = library_raw("eigencam", model, layer, x, [None])[:, 0].reshape(len(x), -1)
    rs = [np.corrcoef(s, t)[0, 1] for s, t in zip(signed, lib)]
    same_sign = [r > 0 for r in rs]
    print(f"{'eigencam':<10} {'(signed)':<9} {len(rs):>3} maps  |Pearson| min {min(abs(r) for r in rs):.8f}  "
          f"same peak up to sign {sum((s * np.sign(r)).argmax() == t.argmax() for s, t, r in zip(signed, lib, rs))}"
          f"/{len(rs)}  library's sign flipped on {len(rs) - sum(same_sign)}")

    k = min(args.scorecam_images, len(x))
    if k:
        channels = layer_channels(model, args.layer, x[:1])
        print(f"Score-CAM on {k} images: {scorecam_forwards(channels, k)} forwards for ours, as many for the library")
        ours_sc = predict_and_explain_many(model, x[:k], labels[:k], ["scorecam"], layer=args.layer).maps["scorecam"]
        theirs_sc = np.maximum(library_raw("scorecam", model, layer, x[:k], [targets[TARGET_PRED][:k]]), 0)
        print(f"{'scorecam':<10} {TARGET_PRED:<9} {agreement(ours_sc[:, 0].numpy(), theirs_sc[:, 0])}")
    print(f"images: {', '.join(paths)}; load average after {os.getloadavg()[0]:.1f}")


def layer_channels(model, layer: str, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(forward_with_tap(model, layer, x)[1].shape[1])


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
