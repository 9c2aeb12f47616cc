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
                  engine: bool = False, workspace_gib: float = 4.0, log=print) -> ExportResult:
    """Write the deployment package of bundle ``ckpt`` to ``out``; with ``engine`` also a TensorRT plan.

    ``verify_images``: a folder whose first 256 images (decoded exactly as training's evaluation
    decodes them) replace the generated self-check images. The package is written (and logged)
    before the engine is built, so it stays when the engine cannot be built: without TensorRT or
    a GPU that raises one ``EngineError`` sentence.
    """
    if verify_images is not None:
        from dga.export.images import load_folder_images

        opts.verify_images = load_folder_images(Path(verify_images), Path(ckpt))
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
