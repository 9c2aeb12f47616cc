"""int8 variant of the fused graph: the encoder's linear layers quantized with ONNX Runtime's tools.

Only the image encoder's MatMul/Gemm nodes with a constant weight (q/k/v in-projection, attention
out-projection, the MLP's two layers, the output projection) are quantized; found by the scope
names the exporter gives every node (``/encoder/...``, export/onnx_export.py). The views, the
patch embedding, the attention's activation-by-activation matmuls, softmax, LayerNorm, the heads
and the fusion steps stay fp32, so the graph's inputs and outputs are unchanged.

Two modes (``onnxruntime.quantization``):

- ``dynamic``: int8 weights, activations quantized per call (DynamicQuantizeLinear +
  MatMulInteger); no calibration data. Gemm has no dynamic form (the exporter writes the
  encoder's linear layers as MatMul anyway).
- ``static``: QDQ format, int8 weights per output channel, activation ranges calibrated (MinMax)
  on given images.

ONNX Runtime's quantizer writes helper files next to the model it reads; the source graph is
therefore hard-linked (or copied) into a private folder beside ``out`` first, so a read-only
package can be quantized and nothing is left beside the source. Its external data, if any, is
copied: onnx refuses to read external data through a file with several hard links.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dga.errors import ConfigError, InputError, PackageError

MODES = ("dynamic", "static")
ENCODER_SCOPE = "/encoder/"  # node-name prefix of the image tower (export/onnx_export.py names scopes)
LINEAR_OPS = ("MatMul", "Gemm")
CALIB_LIMIT = 64  # calibration images dga-export uses (the first of those given)
# Images per calibration call. The calibrating graph outputs only each tensor's min and max per call
# (ReduceMin/ReduceMax), so what is kept between calls is small. (ONNX Runtime 1.32's
# CalibMaxIntermediateOutputs would drop, not merge, the calls before its limit: not used.)
CALIB_BATCH = 8
# Metadata keys ONNX Runtime's quantizer adds to the model; not deployment facts.
QUANTIZER_METADATA = ("onnx.infer", "onnx.quant.pre_process")
# Ops each mode quantizes: ONNX Runtime's dynamic (integer-ops) quantizer has no Gemm.
MODE_OPS = {"dynamic": ("MatMul",), "static": LINEAR_OPS}


def external_data_file(onnx_path: Path) -> Path:
    from dga.runtime.package import external_data_name

    return onnx_path.with_name(external_data_name(onnx_path.name))


def load_graph(path: Path):
    """The graph proto without its weights (names, ops, metadata), or one PackageError sentence."""
    import onnx

    if not Path(path).is_file():
        raise PackageError(f"{path} does not exist: quantize the fp32 graph (model.onnx) of a package")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors have no common base
        raise PackageError(f"{path} is not a readable ONNX graph ({type(exc).__name__}): export it again") from exc


def encoder_linear_nodes(model, ops: tuple[str, ...] = LINEAR_OPS) -> list[str]:
    """Names of the encoder's nodes of ``ops`` (MatMul/Gemm) whose weight (second input) is a constant:
    what a mode quantizes (``MODE_OPS``)."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node
            if n.op_type in ops and n.name.startswith(ENCODER_SCOPE) and len(n.input) > 1
            and n.input[1] in constants]


def check_calib_images(images: np.ndarray | None, mode: str) -> np.ndarray | None:
    if mode == "dynamic":
        return None
    if images is None:
        raise ConfigError("--int8 static needs calibration images (--calib-images DIR or the self-check images)")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"calibration images must be uint8 [N, S0, S0, 3], not {images.dtype} {list(images.shape)}")
    if not len(images):
        raise InputError("calibration needs at least one image; none were given")
    return np.ascontiguousarray(images)


class ImageBatches:
    """ONNX Runtime's CalibrationDataReader over uint8 images, CALIB_BATCH at a time."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = CALIB_BATCH):
        self.images, self.input_name, self.batch = images, input_name, batch
        self.start, self.end = 0, len(images)

    def get_next(self) -> dict | None:
        if self.start >= self.end:
            return None
        x = self.images[self.start:min(self.start + self.batch, self.end)]
        self.start += self.batch
        return {self.input_name: x}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index * self.batch, min(end_index * self.batch, len(self.images))


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


class PreprocessHint(logging.Filter):
    """Drops the quantizer's advice to run its pre-processing (logged at WARNING on every call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in str(record.msg) and "pre_process" not in str(record.msg)


@contextlib.contextmanager
def quiet_quantizer():
    """Keep the export's log readable: the hint is about the quantizer's optional shape pass, not an error."""
    hint = PreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(hint)


def set_precision_metadata(path: Path) -> None:
    """The quantized graph keeps the fp32 graph's metadata_props: say int8, drop the quantizer's own keys."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external data stays where it is referenced
    props = {p.key: p.value for p in model.metadata_props if p.key not in QUANTIZER_METADATA}
    props["precision"] = "int8"
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def quantize_int8(fp32_onnx: Path, out: Path, mode: str = "dynamic", calib_images: np.ndarray | None = None,
                  input_name: str = "images") -> Path:
    """Write the int8 variant of the fused fp32 graph ``fp32_onnx`` to ``out`` (atomically); returns ``out``.

    ``mode``: "dynamic" (int8 weights, activations quantized at run time) or "static" (QDQ,
    per-channel weights, activation ranges calibrated on ``calib_images``, uint8 [N, S0, S0, 3],
    required). A source graph with external data gives an int8 graph with external data
    (``<out>.data``), written beside it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if mode not in MODES:
        raise ConfigError(f"--int8 {mode!r} must be one of {', '.join(MODES)}")
    calib_images = check_calib_images(calib_images, mode)
    graph = load_graph(fp32_onnx)
    inputs = [i.name for i in graph.graph.input]
    if input_name not in inputs:
        raise ConfigError(f"{fp32_onnx} has no input {input_name!r} (it has {', '.join(inputs)})")
    nodes = encoder_linear_nodes(graph, MODE_OPS[mode])
    if not nodes:
        raise PackageError(f"{fp32_onnx} has no encoder MatMul/Gemm nodes (named {ENCODER_SCOPE}...) to quantize: "
                           "export the package again with this dga")
    if calib_images is not None and calib_images.shape[1:3] != _input_side(graph, input_name):
        raise InputError(f"calibration images are {calib_images.shape[1]} px; the graph takes "
                         f"{_input_side(graph, input_name)[0]} px: decode them at the package's S0")
    source_data = external_data_file(fp32_onnx)
    external = source_data.is_file()
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: its folder {out.parent} does not exist")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.quantize-", dir=out.parent))
    try:
        src = work / "source" / fp32_onnx.name
        src.parent.mkdir()
        link_or_copy(fp32_onnx, src)
        if external:
            shutil.copyfile(source_data, external_data_file(src))
        result = work / out.name
        with quiet_quantizer():
            if mode == "dynamic":
                quantize_dynamic(src, result, op_types_to_quantize=list(MODE_OPS[mode]), nodes_to_quantize=nodes,
                                 weight_type=QuantType.QInt8, use_external_data_format=external)
            else:
                quantize_static(src, result, ImageBatches(calib_images, input_name), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(MODE_OPS[mode]), nodes_to_quantize=nodes, per_channel=True,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external)
        set_precision_metadata(result)
        stale = external_data_file(out)
        if external:
            os.replace(external_data_file(result), stale)  # the weights first: the graph names them
        elif stale.exists():
            stale.unlink()  # never leave a companion that belongs to an earlier graph
        os.replace(result, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _input_side(graph, input_name: str) -> tuple[int, int]:
    """(S0, S0) of the graph's uint8 [B, S0, S0, 3] input."""
    (inp,) = [i for i in graph.graph.input if i.name == input_name]
    dims = inp.type.tensor_type.shape.dim
    return int(dims[1].dim_value), int(dims[2].dim_value)
