"""Bundle -> deployment package ``<name>.deploy/`` (DESIGN.md 1 and 5), written atomically.

    model.onnx         fp32 graph: uint8 images [B, S0, S0, 3] -> logits, probs [B, C]
    model.fp16.onnx    encoder in fp16, LayerNorm/softmax/entropy/fusion in fp32 (unless --precision fp32)
    deploy.json        names, shapes, classes, hierarchy, views, hashes, versions, self-check report
    engines/           TensorRT plans + sidecars (only with --engine, on a GPU host with TensorRT)
"""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import dga
from dga.errors import ConfigError, DgaError
from dga.export.deploy_module import DeployModule
from dga.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAMES, export_onnx
from dga.export.verify import Check, checks_json, report_table, verify_package
from dga.runtime.engine_key import file_sha256
from dga.train.bundle import Bundle, load_bundle, replace_dir, writable_tmp_dir
from dga.train.methods import assemble

FORMAT = "dga-deploy"
VERSION = 1
VIEW_SETS = ("all", "no-crops")


class VerificationError(DgaError):
    """The exported graph does not reproduce the trained model within tolerance."""


@dataclass
class ExportOptions:
    precision: str = "fp16"  # fp16: write model.onnx and model.fp16.onnx; fp32: model.onnx only
    max_batch: int = 256
    opt_batch: int = 64
    verify: bool = True
    verify_batches: list[int] = field(default_factory=lambda: [1, 7, 64])
    verify_images: np.ndarray | None = None  # uint8 [N, S0, S0, 3]; generated if None
    views: str = "all"
    opset: int = OPSET
    eval_data: Path | None = None  # labelled dataset: record measured accuracy in deploy.json
    eval_split: str = "test"
    eval_limit: int | None = None

    def validate(self) -> ExportOptions:
        if self.precision not in ("fp16", "fp32"):
            raise ConfigError(f"--precision {self.precision!r} must be fp16 or fp32")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"--opt-batch {self.opt_batch} must be between 1 and --max-batch {self.max_batch}")
        if self.views not in VIEW_SETS:
            raise ConfigError(f"--views {self.views!r} must be one of {', '.join(VIEW_SETS)}")
        if self.opset < 17:
            raise ConfigError(f"--opset {self.opset} must be 17 or newer (LayerNormalization as one op)")
        return self


def select_views(bundle: Bundle, views: str):
    """The bundle's model, or a faster variant with some views dropped (re-assembled, same tensors)."""
    if views == "all":
        return bundle.model, bundle.cfg
    if bundle.cfg["method"] != "dga" or not bundle.cfg.get("vg") or not bundle.cfg.get("scales"):
        raise ConfigError("--views no-crops applies to DGA bundles with crop views (the VG branch)")
    cfg = {**bundle.cfg, "vg": False}
    learned = bundle.model.learned_state()
    n_crop_prompts = bundle.cfg["scales"]
    learned["stack.programs"] = learned["stack.programs"][:-n_crop_prompts]
    return assemble(cfg, learned, bundle.model.backbone).eval(), cfg


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    return {"dga": dga.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def deploy_facts(bundle: Bundle, model, cfg: dict, opts: ExportOptions) -> dict:
    s0, c = cfg["s0"], len(bundle.classnames)
    hierarchy = bundle.manifest.get("hierarchy")
    return {
        "format": FORMAT,
        "version": VERSION,
        "method": cfg["method"],
        "views_variant": opts.views,
        "bundle": {"path": str(bundle.path.resolve()), "tensors_sha256": bundle.manifest["tensors"]["sha256"]},
        "classnames": bundle.classnames,
        "hierarchy": ({"level_sizes": hierarchy["level_sizes"], "parents": hierarchy["parents"]}
                      if hierarchy and cfg.get("sg") else None),
        "views": [v.to_json() for v in model.stack.views],
        "s0": s0,
        "preprocess": {"resize_shorter_side": s0, "interpolation": "bicubic", "antialias": True,
                       "center_crop": s0, "channels": "RGB", "dtype": "uint8", "layout": "NHWC"},
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", s0, s0, 3]},
        "outputs": [{"name": n, "dtype": "float32", "shape": ["batch", c]} for n in OUTPUT_NAMES],
        "batch": {"min": 1, "opt": opts.opt_batch, "max": opts.max_batch},
        "backbone": bundle.manifest["backbone"],
        "opset": opts.opset,
        "versions": versions(),
    }


def generated_images(n: int, s0: int) -> np.ndarray:
    from dga.train.synthetic import sample_images

    return sample_images(n, s0, seed=12345)


def export_package(bundle_path: Path, out: Path, opts: ExportOptions, log=print) -> tuple[Path, list[Check]]:
    """Write the package; on a failed self-check nothing is kept and VerificationError is raised."""
    opts.validate()
    bundle = load_bundle(bundle_path)
    model, cfg = select_views(bundle, opts.views)
    facts = deploy_facts(bundle, model, cfg, opts)
    metadata = {k: facts[k] for k in ("format", "version", "method", "classnames", "hierarchy", "views", "s0",
                                      "input", "outputs", "bundle", "versions")}
    tmp = writable_tmp_dir(out)
    try:
        reference = DeployModule(model, "fp32")
        files = {"model.onnx": export_onnx(reference, tmp / "model.onnx", {**metadata, "precision": "fp32"},
                                           opts.opset)}
        precisions = ["fp32"]
        if opts.precision == "fp16":
            files["model.fp16.onnx"] = export_onnx(DeployModule(model, "fp16"), tmp / "model.fp16.onnx",
                                                   {**metadata, "precision": "fp16"}, opts.opset)
            precisions.append("fp16")
        checks: list[Check] = []
        if opts.verify:
            batches = sorted({b for b in opts.verify_batches if 1 <= b <= opts.max_batch} or {1})
            images = opts.verify_images
            if images is None:
                images = generated_images(max(batches), cfg["s0"])
            elif len(images) < max(batches):
                reps = -(-max(batches) // len(images))
                images = np.concatenate([images] * reps)[: max(batches)]
            checks = verify_package(tmp, reference, images, batches, precisions)
            log(report_table(checks))
            failed = [c for c in checks if not c.passed]
            if failed:
                f = failed[0]
                raise VerificationError(
                    f"self-check failed: {f.precision} at batch {f.batch} differs from the torch module "
                    f"(max |dlogit| {f.max_abs_diff:.3g}, top-1 agreement {f.top1_agreement:.2f}%); nothing was written"
                )
        if opts.eval_data is not None:
            from dga.export.accuracy import accuracy_table, labelled_images

            images, labels = labelled_images(opts.eval_data, opts.eval_split, bundle.classnames, cfg["s0"],
                                             opts.eval_limit)
            accuracy = accuracy_table(tmp, reference, images, labels, precisions)
            facts["accuracy"] = {"data": str(opts.eval_data), "split": opts.eval_split, "images": len(labels),
                                 "top1_percent": accuracy}
            log("accuracy on " + f"{len(labels)} {opts.eval_split} images: "
                + ", ".join(f"{k} {v:.2f}%" for k, v in accuracy.items()))
        facts["files"] = {name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for name, p in files.items()}
        facts["precisions"] = precisions
        facts["self_check"] = {"ran": opts.verify, "checks": checks_json(checks),
                               "images": "given" if opts.verify_images is not None else "generated"}
        (tmp / "deploy.json").write_text(json.dumps(facts, indent=1))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, checks
