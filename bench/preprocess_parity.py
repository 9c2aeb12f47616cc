"""How far apart are training's eval pixels, deployment's pixels and torchvision's? (docs/preprocessing.md)

    python -m dga.bench.preprocess_parity --out bench/results/preprocess-parity.json

Two image sets, generated into a temporary folder that is removed afterwards:

- ``scene-fills-24/test``: the test split of the demo's embedded benchmark (600 square images,
  112-160 px, 4 in 5 JPEG), exactly as ``dga-demo`` generates it;
- ``mixed-jpegs``: the folder of ``dga-bench``'s end-to-end run (JPEGs with sides of 320-1280 px
  and every aspect ratio in between), where the centre crop cuts and JPEG draft engages;
- ``hard-edges``: a worst case for resampling, PNGs of flat random-colour blocks with hard edges.

Three comparisons on each, at ``--size`` (S0, default 192), on uint8 RGB values:

- ``box_vs_torchvision``: the project's eval transform (``runtime.preprocess.eval_image``, one
  bicubic resample of the crop's box) vs torchvision ``Resize(S, BICUBIC, antialias=True)`` +
  ``CenterCrop(S)`` on the same fully decoded PIL image (what open_clip's own preprocess does);
- ``draft_vs_exact``: ``decode_image(path, S)`` (dga-infer's default, JPEG draft on) vs
  ``decode_image(path, S, draft=False)`` (training's evaluation, dga-eval, export's checks);
- ``deployed_vs_torchvision``: the two differences together: dga-infer's default vs torchvision.

Top-1 flips: the shipped backbone (dga-shapes-vit-p32) classifies every image zero-shot into the
24 benchmark classes with each pipeline's pixels at its own input size (224); a flip is an image
whose top-1 class changes between the two pipelines of a comparison.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dga.fsutil import atomic_write

COMPARISONS = {
    "box_vs_torchvision": ("eval_image", "torchvision"),
    "draft_vs_exact": ("draft", "exact"),
    "deployed_vs_torchvision": ("draft", "torchvision"),
}


def hard_edge_folder(root: Path, n: int, seed: int = 0) -> list[Path]:
    """n PNGs of flat random-colour blocks with hard edges (like screenshots or line art), sides 96-1000 px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(96, 1001, size=2))
        cell = int(rng.integers(8, 48))
        blocks = rng.integers(0, 256, size=(h // cell + 1, w // cell + 1, 3), dtype=np.uint8)
        img = Image.fromarray(blocks).resize((w, h), Image.Resampling.NEAREST)
        paths.append(root / f"{i:05d}.png")
        img.save(paths[-1])
    return paths


def torchvision_eval(size: int) -> Callable:
    """torchvision's Resize(size, bicubic, antialias) + CenterCrop(size) on a PIL image -> uint8 HWC."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    tf = transforms.Compose([transforms.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                             transforms.CenterCrop(size)])
    return lambda img: np.asarray(tf(img), dtype=np.uint8)


def pipelines(size: int) -> dict[str, Callable[[Path], np.ndarray]]:
    """name -> (path -> uint8 [size, size, 3]) for each pipeline compared."""
    from dga.runtime.decode import decode_image, open_image
    from dga.runtime.preprocess import eval_image

    tv = torchvision_eval(size)
    return {
        "eval_image": lambda p: eval_image(open_image(p), size),
        "torchvision": lambda p: tv(open_image(p)),
        "draft": lambda p: decode_image(p, size, draft=True),
        "exact": lambda p: decode_image(p, size, draft=False),
    }


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-image difference of two uint8 images (values = pixels x 3 channels)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"values": int(d.size), "differ": int((d > 0).sum()), "over_1": int((d > 1).sum()),
            "over_2": int((d > 2).sum()), "max_abs": int(d.max()), "sum_abs": int(d.sum())}


def summarise(per_image: list[tuple[str, dict]]) -> dict:
    """One comparison over an image set: percentages of all values, and the worst image."""
    values = sum(s["values"] for _, s in per_image)
    pct = [100.0 * s["differ"] / s["values"] for _, s in per_image]
    worst = int(np.argmax(pct))
    worst_max = max(range(len(per_image)), key=lambda i: per_image[i][1]["max_abs"])

    def share(key: str) -> float:
        return round(100.0 * sum(s[key] for _, s in per_image) / values, 4)

    return {
        "images": len(per_image),
        "images_differing": sum(1 for _, s in per_image if s["differ"]),
        "pct_values_differing": share("differ"),
        "pct_values_over_1": share("over_1"),
        "pct_values_over_2": share("over_2"),
        "max_abs": max(s["max_abs"] for _, s in per_image),
        "mean_abs": round(sum(s["sum_abs"] for _, s in per_image) / values, 4),
        "per_image_pct_differing": {"median": round(float(np.median(pct)), 3),
                                    "p90": round(float(np.percentile(pct, 90)), 3),
                                    "max": round(pct[worst], 3)},
        "worst_image": {"file": per_image[worst][0], "pct_values_differing": round(pct[worst], 3),
                        "max_abs": per_image[worst][1]["max_abs"]},
        "largest_difference": {"file": per_image[worst_max][0], "max_abs": per_image[worst_max][1]["max_abs"],
                               "pct_values_over_2": round(100.0 * per_image[worst_max][1]["over_2"]
                                                          / per_image[worst_max][1]["values"], 3)},
    }


def compare_set(paths: list[Path], root: Path, size: int) -> dict:
    fns = pipelines(size)
    per: dict[str, list[tuple[str, dict]]] = {name: [] for name in COMPARISONS}
    for p in paths:
        out = {name: fn(p) for name, fn in fns.items()}
        rel = p.relative_to(root).as_posix()
        for name, (a, b) in COMPARISONS.items():
            per[name].append((rel, diff_stats(out[a], out[b])))
    return {name: summarise(rows) for name, rows in per.items()}


class ZeroShot:
    """The shipped small CLIP as a 24-class zero-shot classifier of uint8 images at its input size."""

    def __init__(self) -> None:
        import torch

        from dga.train.backbone import SHIPPED, load_backbone
        from dga.train.heads import template_text
        from dga.train.scenebench import TEMPLATE, classes

        self.torch = torch
        self.classnames = [c[0] for c in classes()]
        self.bb = load_backbone("dga-shapes-vit-p32", SHIPPED)
        self.size = self.bb.info.image_size
        self.text = template_text(self.bb, self.classnames, TEMPLATE)
        self.mean = torch.tensor(self.bb.info.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.bb.info.std).view(1, 3, 1, 1)

    def top1(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        torch = self.torch
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch):
                x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float() / 255
                out.append((self.bb.encode_image((x - self.mean) / self.std) @ self.text.t()).argmax(1).numpy())
        return np.concatenate(out)


def flips_set(paths: list[Path], model: ZeroShot, labels: list[str] | None) -> dict:
    fns = pipelines(model.size)
    top = {name: model.top1(np.stack([fn(p) for p in paths])) for name, fn in fns.items()}
    result = {"input_size": model.size, "images": len(paths)}
    for name, (a, b) in COMPARISONS.items():
        n = int((top[a] != top[b]).sum())
        result[name] = {"flips": n, "pct": round(100.0 * n / len(paths), 3)}
    if labels is not None:
        truth = np.array([model.classnames.index(c) for c in labels])
        result["accuracy_pct"] = {name: round(100.0 * float((t == truth).mean()), 2) for name, t in top.items()}
    return result


def machine_facts() -> dict:
    import PIL
    import torchvision
    from PIL import features

    from dga.bench.measure import machine

    info = machine()
    for key in ("onnxruntime_providers", "torch_threads"):
        info.pop(key, None)
    info.update({"pillow": PIL.__version__, "libjpeg": features.version("jpg"), "torchvision": torchvision.__version__,
                 "numpy": np.__version__})
    return info


def measure(size: int = 192, mixed: int = 128, hard: int = 64, flips: bool = True, log=print) -> dict:
    from dga.bench.run import mixed_jpeg_folder
    from dga.train.data.imagefolder import list_images
    from dga.train.scenebench import NAME, make_benchmark

    result: dict = {"what": "preprocess parity: the eval transform vs torchvision, JPEG draft vs exact decode",
                    "size": size, "sets": {}}
    model = ZeroShot() if flips else None
    with tempfile.TemporaryDirectory(prefix="dga-parity-") as tmp:
        root = Path(tmp)
        make_benchmark(root / NAME, per_split={"test": 25}, descriptions=False)
        (root / "mixed-jpegs").mkdir()
        mixed_jpeg_folder(root / "mixed-jpegs", mixed)
        hard_edge_folder(root / "hard-edges", hard)
        sets = {
            f"{NAME}/test": (root / NAME / "test", "the demo's test split: square images, 112-160 px, 4 in 5 JPEG "
                             "(quality 90), 1 in 5 PNG; generated by make_benchmark (seed 0)"),
            "mixed-jpegs": (root / "mixed-jpegs", f"dga-bench's end-to-end folder: {mixed} JPEGs (quality 90), "
                            "sides 320-1280 px drawn independently (seed 0)"),
            "hard-edges": (root / "hard-edges", f"a worst case: {hard} PNGs of flat random-colour blocks (8-47 px) "
                           "with hard edges, sides 96-1000 px, some smaller than S0 (seed 0)"),
        }
        for name, (folder, description) in sets.items():
            paths = [Path(p) for p in list_images(folder)]
            log(f"{name}: {len(paths)} images")
            entry = {"description": description, "images": len(paths), **compare_set(paths, folder, size)}
            if model is not None:
                labels = [p.parent.name for p in paths] if name.startswith(NAME) else None
                entry["top1_flips"] = flips_set(paths, model, labels)
            for key in COMPARISONS:
                s = entry[key]
                log(f"  {key}: {s['pct_values_differing']:.2f}% of values differ, {s['pct_values_over_1']:.2f}% by "
                    f"more than 1, {s['pct_values_over_2']:.2f}% by more than 2, max {s['max_abs']}; worst image "
                    f"{s['worst_image']['pct_values_differing']:.1f}%"
                    + (f"; top-1 flips {entry['top1_flips'][key]['flips']}" if model is not None else ""))
            result["sets"][name] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dga.bench.preprocess_parity", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/preprocess-parity.json"),
                        help="JSON file to write [bench/results/preprocess-parity.json].")
    parser.add_argument("--size", type=int, default=192, help="Eval size S0 of the pixel comparison [192].")
    parser.add_argument("--mixed", type=int, default=128, help="JPEGs in the mixed-size set [128].")
    parser.add_argument("--hard", type=int, default=64, help="PNGs in the hard-edge set [64].")
    parser.add_argument("--no-flips", action="store_true", help="Skip the zero-shot top-1 flip count.")
    args = parser.parse_args(argv)
    t0 = _dt.datetime.now(_dt.UTC)
    result = measure(args.size, args.mixed, args.hard, not args.no_flips)
    argv_used = sys.argv[1:] if argv is None else argv
    result = {"command": shlex.join(["python", "-m", "dga.bench.preprocess_parity", *argv_used]),
              "date": t0.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine_facts(), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
