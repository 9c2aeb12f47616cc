"""Accuracy of every method on the embedded benchmark, over seeds: the README's results table (issue 5).

One row is zero-shot CLIP (template head on the plain eval image, no prompt) or a method with
optional MethodConfig overrides (the DGA ablations). Each (row, seed) trains a bundle with
``run_training``, reloads it and scores the test split. Results are written after every run
(``results.json``, atomically), so an interrupted comparison continues where it stopped when run
again with the same settings; ``results.md`` is the table.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dga.fsutil import atomic_write


@dataclass(frozen=True)
class Row:
    name: str
    method: str | None  # None: zero-shot
    overrides: dict = field(default_factory=dict)


ROWS: tuple[Row, ...] = (
    Row("zero-shot", None),
    Row("VP", "vp"),
    Row("AR", "ar"),
    Row("AttrVR", "attrvr"),
    Row("DVP-cse", "dvp-cse"),
    Row("DVP-cls", "dvp-cls"),
    Row("DGA", "dga"),
    Row("DGA w/o HKP", "dga", {"hkp": False}),
    Row("DGA w/o SG", "dga", {"sg": False}),
    Row("DGA w/o UPF", "dga", {"upf": False}),
    Row("DGA w/o VG", "dga", {"vg": False}),
)


@dataclass
class CompareConfig:
    data: Path
    out: Path
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 16
    epochs: int = 6
    lr: float = 10.0
    batch_size: int = 32
    crop_scale: float = 0.5
    backbone: str = "dga-shapes-vit-p32"
    pretrained: str | None = "shipped"
    template: str | None = None  # None: the benchmark's template
    rows: tuple[str, ...] = tuple(r.name for r in ROWS)
    device: str = "cpu"

    def settings(self) -> dict:
        """What results depend on: a saved run is reused only if these match."""
        d = asdict(self)
        for k in ("out", "seeds", "rows", "device"):
            d.pop(k)
        d["data"] = str(Path(self.data).resolve())
        return d


def row_by_name(name: str) -> Row:
    for r in ROWS:
        if r.name.lower() == name.lower():
            return r
    raise ValueError(f"unknown row {name!r}: choose from {', '.join(r.name for r in ROWS)}")


def description_files(data: Path) -> dict[str, Path]:
    """The benchmark's description files by role (as ``dga-train`` takes them)."""
    names = {"default": "descriptions.json", "des": "desattr.json", "dist": "distattr.json",
             "cause0": "cause_shape.json", "cause1": "cause_colour.json", "cause2": "cause_texture.json"}
    return {role: data / f for role, f in names.items() if (data / f).is_file()}


def test_items(data: Path):
    from dga.train.data.coop import load_dataset

    splits = load_dataset(data, None, 0.2, 0.2, seed=0)
    return splits.classnames, splits.split("test")


@torch.no_grad()
def zero_shot_accuracy(cfg: CompareConfig, template: str) -> float:
    """CLIP zero-shot: the template head on the plain eval image at the encoder's size (no prompt)."""
    from dga.train.backbone import load_backbone
    from dga.train.data.images import eval_transform
    from dga.train.heads import template_text
    from dga.train.trainer import make_loader

    bb = load_backbone(cfg.backbone, cfg.pretrained, device=cfg.device)
    classnames, items = test_items(cfg.data)
    text = template_text(bb, classnames, template).to(cfg.device)
    mean = torch.tensor(bb.info.mean, device=cfg.device).view(1, 3, 1, 1)
    std = torch.tensor(bb.info.std, device=cfg.device).view(1, 3, 1, 1)
    correct = total = 0
    for x, y in make_loader(items, eval_transform(bb.info.image_size), 64, False, 0, 0):
        pred = (bb.encode_image((x.to(cfg.device) - mean) / std) @ text.t()).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def bundle_test_accuracy(bundle: Path, data: Path, device: str) -> dict:
    from dga.train.bundle import load_bundle
    from dga.train.data.images import eval_transform
    from dga.train.evaluate import accuracy_report, predict
    from dga.train.trainer import make_loader

    dev = torch.device(device)
    b = load_bundle(bundle, dev)
    classnames, items = test_items(data)
    res = predict(b.model, make_loader(items, eval_transform(b.cfg["s0"]), 64, False, 0, 0), dev)
    parents = (b.manifest.get("hierarchy") or {}).get("parents")
    rep = accuracy_report(res["logits"], res["labels"], classnames, res["level_logits"], parents)
    return {"test_acc": rep["accuracy"], "levels": rep.get("hierarchy", [])}


def row_files(data: Path, row: Row) -> dict[str, Path]:
    """The description files a row reads: each method the roles it uses; only DVP-cse the causes."""
    if row.method is None:
        return {}
    return {r: p for r, p in description_files(data).items()
            if r in ("default", "des", "dist") or (row.method == "dvp-cse" and r.startswith("cause"))}


def images_digest(data: Path) -> str:
    """sha256 over every file of the train/val/test splits (relative path, bytes): the images themselves."""
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for path in sorted(p for p in (data / split).rglob("*") if p.is_file()):
            h.update(f"{path.relative_to(data).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def inputs_digest(data: Path, row: Row, images: str = "") -> str:
    """sha256 over the images' digest and the row's description files (role, name, bytes): a stored run
    is stale when either changes (a regenerated benchmark, an edited description file)."""
    h = hashlib.sha256(images.encode())
    for role, path in sorted(row_files(data, row).items()):
        h.update(f"{role}\0{path.name}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def train_row(cfg: CompareConfig, row: Row, seed: int, template: str, bundle: Path) -> dict:
    from dga.train.config import MethodConfig, TrainConfig
    from dga.train.run import TrainJob, run_training

    files = row_files(Path(cfg.data), row)  # K of DVP-cse = the number of cause files
    method_cfg = MethodConfig(template=template, **row.overrides)
    job = TrainJob(data=Path(cfg.data), out=bundle, method=row.method, backbone=cfg.backbone,
                   pretrained=cfg.pretrained, shots=cfg.shots, descriptions=files,
                   splits_dir=Path(cfg.out) / "splits", method_cfg=method_cfg,
                   train_cfg=TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                                         device=cfg.device, crop_scale=cfg.crop_scale),
                   plots=False, progress=False)
    path, result, training = run_training(job)
    out = bundle_test_accuracy(path, Path(cfg.data), cfg.device)
    out.update({"val_acc": result.best_val_acc, "best_epoch": result.best_epoch,
                "train_s": training["wall_time_s"]})
    return out


def run_compare(cfg: CompareConfig, log: Callable[[str], None] = print) -> dict:
    """Fill ``out/results.json`` with every (row, seed) not there yet; write ``out/results.md``; return results."""
    from dga.train.scenebench import TEMPLATE, make_benchmark

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data)
    if not (data / "train").is_dir():
        t = time.time()
        make_benchmark(data)
        log(f"generated the benchmark in {data} ({time.time() - t:.1f}s)")
    template = cfg.template or TEMPLATE
    rows = [row_by_name(n) for n in cfg.rows]
    (out / "bundles").mkdir(exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if results.get("settings") != cfg.settings():
        results = {"settings": cfg.settings(), "runs": {}}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()}
    runs = results["runs"]
    images = images_digest(data)
    digests = {row.name: inputs_digest(data, row, images) for row in rows}
    for seed in cfg.seeds:
        for row in rows:
            key = f"{row.name}|{seed}"
            digest = digests[row.name]
            if key in runs and runs[key].get("inputs_sha256", digest) == digest:
                continue  # (runs stored before digests were recorded carry none and are kept)
            if key in runs:
                log(f"{row.name:12s} seed {seed}: its images or description files changed since it ran; "
                    "running it again")
            t = time.time()
            if row.method is None:
                zs = next((v for k, v in runs.items() if k.startswith("zero-shot|")
                           and v.get("inputs_sha256") == digest), None)
                runs[key] = dict(zs) if zs else {"test_acc": zero_shot_accuracy(cfg, template)}
            else:
                runs[key] = train_row(cfg, row, seed, template, out / "bundles" / f"{_slug(row.name)}-s{seed}.dga")
            runs[key]["wall_s"] = round(time.time() - t, 1)
            runs[key]["inputs_sha256"] = digest
            log(f"{row.name:12s} seed {seed}: test accuracy {runs[key]['test_acc']:.2f}% ({runs[key]['wall_s']}s)")
            atomic_write(res_path, json.dumps(results, indent=1))
    # The table shows every row stored, not only the ones this call ran (--rows picks what to train).
    stored = {k.split("|")[0] for k in runs}
    table = markdown_table(results, [r.name for r in ROWS if r.name in stored], cfg.seeds)
    atomic_write(out / "results.md", table)
    return results


def _slug(name: str) -> str:
    return name.lower().replace(" w/o ", "-no-").replace(" ", "-")


def summarise(results: dict, row: str, seeds) -> tuple[list[float], float, float]:
    accs = [results["runs"][f"{row}|{s}"]["test_acc"] for s in seeds if f"{row}|{s}" in results["runs"]]
    if not accs:
        return [], float("nan"), float("nan")
    return accs, statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0


def markdown_table(results: dict, rows: list[str], seeds) -> str:
    s = results["settings"]
    _, zs_mean, _ = summarise(results, "zero-shot", seeds)
    lines = [
        f"Test accuracy (%) on `{'/'.join(Path(s['data']).parts[-2:])}`, {s['shots']} shots, backbone {s['backbone']} "
        f"({s['pretrained']}), {s['epochs']} epochs, lr {s['lr']}, batch {s['batch_size']}, "
        f"crop scale {s['crop_scale']}; seeds {', '.join(map(str, seeds))}.",
        "",
        "| method | " + " | ".join(f"seed {x}" for x in seeds) + " | mean ± std | vs zero-shot | train s/run |",
        "|---|" + "---:|" * (len(seeds) + 3),
    ]
    for row in rows:
        accs, mean, std = summarise(results, row, seeds)
        if not accs:
            continue
        per = [results["runs"].get(f"{row}|{x}", {}).get("test_acc") for x in seeds]
        times = [results["runs"][f"{row}|{x}"].get("train_s") for x in seeds if f"{row}|{x}" in results["runs"]]
        times = [t for t in times if t is not None]
        cells = ["–" if a is None else f"{a:.1f}" for a in per]
        delta = "" if row == "zero-shot" else f"{mean - zs_mean:+.1f}"
        t = f"{statistics.fmean(times):.0f}" if times else ""
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {mean:.1f} ± {std:.1f} | {delta} | {t} |")
    return "\n".join(lines) + "\n"
