"""Bundle -> deployment package ``<name>.deploy/`` (DESIGN.md 1 and 5), written atomically.

The format itself (files, manifest schema, hashing, golden outputs) is defined once, in
``dga.runtime.package``; this module fills it from a bundle.
"""

from __future__ import annotations

import math
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import dga
from dga.errors import ConfigError, DgaError
from dga.export.deploy_module import DeployModule
from dga.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAMES, encode_metadata, export_onnx
from dga.export.verify import Check, checks_json, golden_check, report_table, verify_package
from dga.fsutil import atomic_write
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
    int8: str | None = None  # "dynamic" | "static": also write model.int8.onnx (export/quantize.py)
    int8_agreement: float = fmt.INT8_TOP1_PERCENT  # the int8 gate: top-1 agreement (%) with the fp32 module
    calib_images: np.ndarray | None = None  # uint8 [N, S0, S0, 3] for --int8 static; None: the self-check images

    def validate(self) -> ExportOptions:
        if self.precision not in ("fp16", "fp32"):
            raise ConfigError(f"--precision {self.precision!r} must be fp16 or fp32")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"--opt-batch {self.opt_batch} must be between 1 and --max-batch {self.max_batch}")
        if self.views not in VIEW_SETS:
            raise ConfigError(f"--views {self.views!r} must be one of {', '.join(VIEW_SETS)}")
        if self.opset < 17:
            raise ConfigError(f"--opset {self.opset} must be 17 or newer (LayerNormalization as one op)")
        if self.int8 is not None:
            from dga.export.quantize import MODES

            if self.int8 not in MODES:
                raise ConfigError(f"--int8 {self.int8!r} must be one of {', '.join(MODES)}")
            if not self.verify:
                raise ConfigError("--int8 is kept only when it passes its agreement gate, which is part of the "
                                  "self-check: drop --no-verify (or --int8-agreement 0 keeps any int8 graph)")
        if not math.isfinite(self.int8_agreement) or self.int8_agreement < 0:
            raise ConfigError(f"--int8-agreement {self.int8_agreement:g} must be a percentage of 0 or more")
        if self.calib_images is not None and self.int8 != "static":
            raise ConfigError("--calib-images is for --int8 static (dynamic quantization needs no calibration)")
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


def write_reference(directory: Path, module: DeployModule, images: np.ndarray, source: str,
                    int8_top1_percent: float | None = None) -> dict:
    """Golden outputs: the trained torch module's fp32 logits and probs for ``images``.

    ``int8_top1_percent``: the int8 gate the package was exported with (only when it has int8).
    """
    import torch

    with torch.no_grad():
        logits, probs = module(torch.from_numpy(images))
    np.savez_compressed(directory / fmt.REFERENCE_FILE, images=images, logits=logits.numpy(), probs=probs.numpy())
    tolerances = {"fp32_max_abs_logit": fmt.FP32_MAX_ABS_LOGIT, "fp16_top1_percent": fmt.FP16_TOP1_PERCENT,
                  "near_tie": fmt.NEAR_TIE}
    if int8_top1_percent is not None:
        tolerances["int8_top1_percent"] = int8_top1_percent
    return {"file": fmt.REFERENCE_FILE, "images": len(images), "source": source, "module": "torch fp32",
            "tolerances": tolerances}


def check_images(opts: ExportOptions, s0: int) -> tuple[np.ndarray, list[int]]:
    """The self-check's images (given or generated, repeated up to the largest batch) and batch sizes."""
    batches = sorted({b for b in opts.verify_batches if 1 <= b <= opts.max_batch} or {1})
    images = opts.verify_images
    if images is None:
        images = generated_images(max(batches), s0)
    elif len(images) < max(batches):
        reps = -(-max(batches) // len(images))
        images = np.concatenate([images] * reps)[: max(batches)]
    return images, batches


def write_int8(directory: Path, opts: ExportOptions, self_check_images: np.ndarray, log=print) -> dict:
    """model.int8.onnx from the package's model.onnx; returns its facts for deploy.json."""
    from dga.export.quantize import CALIB_LIMIT, MODE_OPS, encoder_linear_nodes, load_graph, quantize_int8

    fp32 = directory / fmt.ONNX_FILES["fp32"]
    calib, source = None, None
    if opts.int8 == "static":
        given = opts.calib_images is not None
        calib = (opts.calib_images if given else self_check_images)[:CALIB_LIMIT]
        source = "given" if given else "self-check images"
    quantize_int8(fp32, directory / fmt.ONNX_FILES["int8"], opts.int8, calib, INPUT_NAME)
    nodes = len(encoder_linear_nodes(load_graph(fp32), MODE_OPS[opts.int8]))
    log(f"int8 ({opts.int8}): {nodes} encoder {'/'.join(MODE_OPS[opts.int8])} nodes quantized"
        + (f", calibrated on {len(calib)} {source}" if calib is not None else ""))
    return {"mode": opts.int8, "quantized": f"encoder {'/'.join(MODE_OPS[opts.int8])} with constant weights",
            "quantized_nodes": nodes,
            "calibration": None if calib is None else {"images": len(calib), "source": source}}


def gate_failure(failed: Check, opts: ExportOptions) -> str:
    """One sentence on the first failed self-check row."""
    f = failed
    if f.precision == "int8" and not f.ran:
        return f"the int8 graph could not be checked: {f.note}; nothing was written (export without --int8)"
    if f.precision == "int8":
        where = f"on {f.note}" if f.note.startswith("the ") else f"at batch {f.batch}"
        return (f"int8 self-check failed: top-1 agreement with the fp32 torch module is {f.top1_agreement:.2f}% "
                f"{where}, below --int8-agreement {opts.int8_agreement:g}%; nothing was written (try the "
                f"other --int8 mode, a lower --int8-agreement, or export without --int8)")
    return (f"self-check failed: {f.precision} at batch {f.batch} differs from the torch module "
            f"(max |dlogit| {f.max_abs_diff:.3g}, top-1 agreement {f.top1_agreement:.2f}%); nothing was written")


# The facts every graph carries in its metadata_props besides its precision and the manifest digest.
GRAPH_FACTS = ("format", "version", "method", "classnames", "hierarchy", "views", "s0", "input", "outputs", "bundle",
               "versions")


def graph_metadata(facts: dict, precision: str) -> dict[str, object]:
    """The metadata_props of a package's graph, whichever writes it (fp32, fp16, int8 alike): the main
    facts, its precision and the digest of deploy.json's facts that every reader checks
    (runtime/package.py). Graph writers pass it on (export_onnx) with the digest of the facts so far;
    ``write_manifest`` writes it into every graph again once the facts are final."""
    return {**{k: facts[k] for k in GRAPH_FACTS}, "precision": precision, fmt.DIGEST_KEY: fmt.digest_record(facts)}


def seal_graphs(directory: Path, facts: dict) -> None:
    """Write ``graph_metadata`` of the final ``facts`` into each graph of ``facts["precisions"]`` in place.

    Only the metadata changes: the graph proto is read without its external data (whose file is
    left as it is) and written back atomically.
    """
    import onnx

    for precision in facts["precisions"]:
        path = directory / fmt.ONNX_FILES[precision]
        model = onnx.load(str(path), load_external_data=False)
        del model.metadata_props[:]
        for key, value in encode_metadata(graph_metadata(facts, precision)).items():
            model.metadata_props.add(key=key, value=value)
        atomic_write(path, model.SerializeToString())


def write_manifest(directory: Path, facts: dict, files: list[str]) -> Path:
    """Seal the graphs with the final facts' digest, hash the files into deploy.json, and read the result
    back as every reader will (a digest that does not match is a bug here, never shipped)."""
    seal_graphs(directory, facts)
    path = fmt.write_manifest(directory, facts, files)
    fmt.DeployPackage.load(directory)
    return path


def export_package(bundle_path: Path, out: Path, opts: ExportOptions, log=print) -> tuple[Path, list[Check]]:
    """Write the package; on a failed self-check nothing is kept and VerificationError is raised."""
    opts.validate()
    bundle = load_bundle(bundle_path)
    model, cfg = select_views(bundle, opts.views)
    facts = deploy_facts(bundle, model, cfg, opts)
    onnx_kw = {} if opts.external_data is None else {"external_data": opts.external_data}
    tmp = writable_tmp_dir(out)
    try:
        reference = DeployModule(model, "fp32")
        precisions = ["fp32", "fp16"] if opts.precision == "fp16" else ["fp32"]
        for precision in precisions:
            module = reference if precision == "fp32" else DeployModule(model, precision)
            export_onnx(module, tmp / fmt.ONNX_FILES[precision], graph_metadata(facts, precision), opts.opset,
                        **onnx_kw)
        images, batches = check_images(opts, cfg["s0"])
        if opts.int8 is not None:
            facts["int8"] = write_int8(tmp, opts, images, log)
            precisions = [*precisions, "int8"]
        tolerances = {"int8_top1_percent": opts.int8_agreement}
        checks: list[Check] = []
        if opts.verify:
            checks = verify_package(tmp, reference, images, batches, precisions, tolerances)
            log(report_table(checks))
            # int8 is meant for this host's CPU: a graph that could not run here is not kept unchecked.
            failed = [c for c in checks if not c.passed and (c.ran or c.precision == "int8")]
            if failed:
                raise VerificationError(gate_failure(failed[0], opts))
        if opts.eval_data is not None:
            from dga.export.accuracy import accuracy_table, labelled_images

            images, labels = labelled_images(opts.eval_data, opts.eval_split, bundle.classnames, cfg["s0"],
                                             opts.eval_limit)
            accuracy = accuracy_table(tmp, reference, images, labels, precisions)
            facts["accuracy"] = {"data": str(opts.eval_data), "split": opts.eval_split, "images": len(labels),
                                 "top1_percent": accuracy}
            log("accuracy on " + f"{len(labels)} {opts.eval_split} images: "
                + ", ".join(f"{k} {v:.2f}%" for k, v in accuracy.items()))
        facts["reference"] = write_reference(tmp, reference, *golden_inputs(opts.verify_images, cfg["s0"]),
                                             int8_top1_percent=opts.int8_agreement if opts.int8 else None)
        facts["precisions"] = precisions
        facts["self_check"] = {"ran": opts.verify, "checks": checks_json(checks),
                               "images": "given" if opts.verify_images is not None else "generated"}
        files = []
        for precision in precisions:
            name = fmt.ONNX_FILES[precision]
            files += [name] + ([fmt.external_data_name(name)] if (tmp / fmt.external_data_name(name)).is_file() else [])
        write_manifest(tmp, facts, files + [fmt.REFERENCE_FILE])
        if opts.int8 is not None:
            # The finished package's golden images as dga-verify runs and judges them on this host (its
            # runner, chunking and tolerances: dynamic int8 depends on the images of a call), so a kept
            # int8 graph passes dga-verify here. Logged, not recorded: the package is final by now.
            golden = golden_check(tmp, "int8")
            log(report_table([golden]))
            if not golden.passed:
                raise VerificationError(gate_failure(golden, opts))
            checks = [*checks, golden]
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, checks
