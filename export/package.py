"""Bundle -> deployment package ``<name>.deploy/`` (DESIGN.md 1 and 5), written atomically.

The format itself (files, manifest schema, hashing, golden outputs) is defined once, in
``dga.runtime.package``; this module fills it from a bundle.
"""

from __future__ import annotations

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
from dga.runtime import package as fmt
from dga.train.bundle import Bundle, load_bundle, replace_dir, writable_tmp_dir
from dga.train.methods import assemble

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
    external_data: bool | None = None  # ONNX external data: None = only for graphs over protobuf's 2 GB

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
        "format": fmt.FORMAT,
        "version": fmt.VERSION,
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


def golden_inputs(given: np.ndarray | None, s0: int, n: int = fmt.REFERENCE_IMAGES) -> tuple[np.ndarray, str]:
    """The package's fixed reference images: the first ``n`` given ones, filled up with generated ones."""
    if given is None:
        return generated_images(n, s0), "generated"
    if len(given) >= n:
        return np.ascontiguousarray(given[:n]), "given"
    return np.concatenate([given, generated_images(n - len(given), s0)]), "given+generated"


def write_reference(directory: Path, module: DeployModule, images: np.ndarray, source: str) -> dict:
    """Golden outputs: the trained torch module's fp32 logits and probs for ``images``."""
    import torch

    with torch.no_grad():
        logits, probs = module(torch.from_numpy(images))
    np.savez_compressed(directory / fmt.REFERENCE_FILE, images=images, logits=logits.numpy(), probs=probs.numpy())
    return {"file": fmt.REFERENCE_FILE, "images": len(images), "source": source, "module": "torch fp32",
            "tolerances": {"fp32_max_abs_logit": fmt.FP32_MAX_ABS_LOGIT, "fp16_top1_percent": fmt.FP16_TOP1_PERCENT,
                           "near_tie": fmt.NEAR_TIE}}


def export_package(bundle_path: Path, out: Path, opts: ExportOptions, log=print) -> tuple[Path, list[Check]]:
    """Write the package; on a failed self-check nothing is kept and VerificationError is raised."""
    opts.validate()
    bundle = load_bundle(bundle_path)
    model, cfg = select_views(bundle, opts.views)
    facts = deploy_facts(bundle, model, cfg, opts)
    metadata = {k: facts[k] for k in ("format", "version", "method", "classnames", "hierarchy", "views", "s0",
                                      "input", "outputs", "bundle", "versions")}
    onnx_kw = {} if opts.external_data is None else {"external_data": opts.external_data}
    tmp = writable_tmp_dir(out)
    try:
        reference = DeployModule(model, "fp32")
        precisions = ["fp32", "fp16"] if opts.precision == "fp16" else ["fp32"]
        for precision in precisions:
            module = reference if precision == "fp32" else DeployModule(model, precision)
            export_onnx(module, tmp / fmt.ONNX_FILES[precision], {**metadata, "precision": precision}, opts.opset,
                        **onnx_kw)
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
            failed = [c for c in checks if c.ran and not c.passed]
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
        facts["reference"] = write_reference(tmp, reference, *golden_inputs(opts.verify_images, cfg["s0"]))
        facts["precisions"] = precisions
        facts["self_check"] = {"ran": opts.verify, "checks": checks_json(checks),
                               "images": "given" if opts.verify_images is not None else "generated"}
        files = []
        for precision in precisions:
            name = fmt.ONNX_FILES[precision]
            files += [name] + ([fmt.external_data_name(name)] if (tmp / fmt.external_data_name(name)).is_file() else [])
        fmt.write_manifest(tmp, facts, files + [fmt.REFERENCE_FILE])
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, checks
