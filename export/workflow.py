"""dga-export as one call: optional self-check images from a folder, the package, optionally an engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dga.export.package import ExportOptions, export_package
from dga.runtime.package import ONNX_FILES


@dataclass
class ExportResult:
    package: Path
    checks: list = field(default_factory=list)  # the self-check's Check rows
    engine: Path | None = None  # the TensorRT plan, when one was built


def export_bundle(ckpt: Path, out: Path, opts: ExportOptions, verify_images: Path | None = None,
                  engine: bool = False, workspace_gib: float = 4.0, calib_images: Path | None = None,
                  log=print) -> ExportResult:
    """Write the deployment package of bundle ``ckpt`` to ``out``; with ``engine`` also a TensorRT plan.

    ``verify_images``: a folder whose first 256 images (decoded exactly as training's evaluation
    decodes them) replace the generated self-check images. ``calib_images``: a folder whose first
    64 images calibrate ``--int8 static`` (default: the self-check images). The package is written
    (and logged) before the engine is built, so it stays when the engine cannot be built: without
    TensorRT or a GPU that raises one ``EngineError`` sentence.
    """
    opts.validate()  # option errors before any image is decoded
    if verify_images is not None:
        from dga.export.images import load_folder_images

        opts.verify_images = load_folder_images(Path(verify_images), Path(ckpt))
    if calib_images is not None:
        opts.calib_images = calibration_images(Path(calib_images), Path(ckpt), opts)
    path, checks = export_package(Path(ckpt), Path(out), opts, log=log)
    log(f"wrote {path}")
    result = ExportResult(path, checks)
    if engine:
        from dga.export.tensorrt_build import build_engine
        from dga.runtime.engine_key import choose_profile

        onnx_file = path / ONNX_FILES[opts.precision]
        result.engine = build_engine(onnx_file, path, choose_profile(opts.max_batch, opts.opt_batch), opts.precision,
                                     workspace_gib)
        log(f"engine {result.engine}")
    return result


def calibration_images(folder: Path, ckpt: Path, opts: ExportOptions):
    """The first CALIB_LIMIT images of ``--calib-images`` at the bundle's S0 (checked before decoding)."""
    from dga.errors import ConfigError, DataError
    from dga.export.images import folder_images
    from dga.export.quantize import CALIB_LIMIT
    from dga.train.bundle import read_manifest
    from dga.train.data.imagefolder import list_images

    if opts.int8 != "static":
        raise ConfigError("--calib-images is for --int8 static (dynamic quantization needs no calibration)")
    # folder_images names --verify-images in its errors; these two are about --calib-images.
    if not folder.is_dir():
        raise DataError(f"--calib-images {folder} is not a folder of images")
    if not list_images(folder):
        raise DataError(f"--calib-images {folder} holds no images")
    return folder_images(folder, read_manifest(ckpt)["input"]["s0"], CALIB_LIMIT)
