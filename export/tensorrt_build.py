"""Build a TensorRT engine from the exported ONNX file, cached by ``EngineKey``.

Written against the TensorRT 10 and 11 Python APIs and imported lazily: the ONNX package is
complete without TensorRT. Every decision (cache hit/miss/stale, network flags per version,
profile shapes, builder flags) is a pure function over plain values or a duck-typed ``trt``
module, so it is tested without TensorRT; the code that calls TensorRT is ``_build_plan``.

Precision lives in the ONNX graph (``model.fp16.onnx`` carries its own casts). TensorRT 11 has no
FP16 builder flag and always builds strongly typed networks; TensorRT 10 gets the same behaviour
through ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``. Nothing removed in 11 is used:
no ``BuilderFlag.FP16``, no ``platform_has_fast_fp16``, no calibrators, no ``EXPLICIT_BATCH``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from dga.errors import EngineError
from dga.runtime.engine_key import (
    PRECISIONS,
    EngineKey,
    Profile,
    atomic_write_bytes,
    check_engine,
    write_sidecar,
)
from dga.runtime.package import graph_digest

log = logging.getLogger(__name__)

INPUT_NAME = "images"
TIMING_CACHE_NAME = "timing.cache"
MIN_TRT_MAJOR = 10
NO_TENSORRT = (
    "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU); "
    "the ONNX package is complete without it."
)


def import_tensorrt() -> ModuleType:
    """Import ``tensorrt`` on first use, or raise the one-sentence ``EngineError``."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(NO_TENSORRT) from exc
    return tensorrt


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """``(GPU name, compute capability "major.minor")`` of the CUDA device the engine is built on."""
    try:
        import torch
    except ImportError as exc:
        raise EngineError("no CUDA GPU can be queried because PyTorch is not installed; "
                          "install torch with CUDA to build an engine.") from exc
    if not torch.cuda.is_available():
        raise EngineError("no CUDA GPU is visible: a TensorRT engine must be built on the GPU it will run "
                          "on; the ONNX package is complete without it.")
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def trt_major(trt: Any) -> int:
    """Major version from ``trt.__version__`` ("10.13.3.9" -> 10)."""
    version = str(getattr(trt, "__version__", ""))
    match = re.match(r"^(\d+)\.", version)
    if not match:
        raise EngineError(f"cannot read the TensorRT version from tensorrt.__version__ = {version!r}.")
    return int(match.group(1))


def network_flags(trt: Any, precision: str) -> int:
    """Creation flags for ``builder.create_network``.

    TensorRT 11+: 0 (strongly typed is the default; the flag is deprecated and ignored).
    TensorRT 10, fp16: ``1 << STRONGLY_TYPED`` so the graph's own casts decide precision.
    TensorRT 10, fp32: 0, a plain fp32 network. ``EXPLICIT_BATCH`` is never set: it is a no-op in
    10 and gone in 11.
    """
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    major = trt_major(trt)
    if major < MIN_TRT_MAJOR:
        raise EngineError(f"TensorRT {trt.__version__} is too old: install TensorRT 10 or 11.")
    if major >= 11 or precision == "fp32":
        return 0
    flag_enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed = getattr(flag_enum, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        raise EngineError(f"TensorRT {trt.__version__} has no strongly typed networks, which the fp16 ONNX "
                          "needs: upgrade TensorRT.")
    return 1 << int(strongly_typed)


def builder_flags_to_clear(trt: Any, precision: str) -> list[Any]:
    """Builder flags to clear: TF32 for fp32, so fp32 engines match the fp32 ONNX within 1e-3.

    TF32 (on by default on Ampere and newer) rounds matmul inputs to 10 mantissa bits; fp32 users
    asked for fp32. Cleared only where ``BuilderFlag.TF32`` exists.
    """
    tf32 = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    return [tf32] if precision == "fp32" and tf32 is not None else []


def workspace_bytes(workspace_gib: float) -> int:
    """Workspace pool limit in bytes (at least 1 MiB: a zero limit makes every tactic fail)."""
    if not isinstance(workspace_gib, int | float) or isinstance(workspace_gib, bool) or workspace_gib <= 0:
        raise EngineError(f"workspace of {workspace_gib!r} GiB is invalid: give a positive number.")
    return max(int(workspace_gib * (1 << 30)), 1 << 20)


def profile_shapes(input_shape: tuple[int, ...], profile: Profile) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes for the ``images`` input, [B, S, S, 3] with the batch from ``profile``."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or shape[3] != 3 or any(d <= 0 for d in shape[1:]):
        raise EngineError(f"the ONNX input '{INPUT_NAME}' has shape {list(shape)}, not [batch, S, S, 3]; "
                          "re-export the package.")
    if shape[0] >= 0:
        raise EngineError(f"the ONNX input '{INPUT_NAME}' has a fixed batch of {shape[0]}; "
                          "re-export with a dynamic batch axis.")
    rest = shape[1:]
    return tuple((b, *rest) for b in (profile.min_batch, profile.opt_batch, profile.max_batch))


def parser_error_message(parser: Any, onnx_path: Path, log_path: Path) -> str:
    """One sentence naming the first ONNX parser error and where the rest is."""
    count = int(getattr(parser, "num_errors", 0))
    first = str(parser.get_error(0)).strip().rstrip(".") if count else "no error was reported"
    return (f"TensorRT could not parse {onnx_path.name}: {first} ({count} error(s) in all; "
            f"builder log {log_path}).")


def make_logger(trt: Any, stream: TextIO) -> Any:
    """A ``trt.ILogger`` writing every message to the build log and keeping the errors for reports."""

    class _BuildLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity)).rsplit(".", 1)[-1]
            stream.write(f"[{name}] {msg}\n")
            stream.flush()
            if name in ("ERROR", "INTERNAL_ERROR"):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)

    return _BuildLogger()


def _find_input(network: Any) -> Any:
    """The network input named ``images`` (the package's one image input)."""
    inputs = [network.get_input(i) for i in range(int(network.num_inputs))]
    for tensor in inputs:
        if tensor.name == INPUT_NAME:
            return tensor
    names = [t.name for t in inputs]
    raise EngineError(f"the ONNX graph has inputs {names} but no '{INPUT_NAME}'; re-export the package.")


def _set_timing_cache(config: Any, cache_path: Path, stream: TextIO) -> None:
    """Start from the saved timing cache; one from another GPU or TensorRT (or corrupt) starts empty."""
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
        except (RuntimeError, TypeError, ValueError):
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        stream.write(f"[dga] timing cache {cache_path} does not fit this GPU/TensorRT; starting empty\n")
        log.warning("timing cache %s does not fit this GPU or TensorRT version; starting an empty one",
                    cache_path)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _build_plan(trt: Any, onnx_path: Path, profile: Profile, precision: str, workspace: int,
                cache_path: Path, stream: TextIO, log_path: Path) -> memoryview:
    """The TensorRT calls: parse, configure, build; returns the serialized plan."""
    logger = make_logger(trt, stream)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, precision))
    parser = trt.OnnxParser(network, logger)  # owns the weights: must live until the build ends
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineError(parser_error_message(parser, onnx_path, log_path))

    images = _find_input(network)
    shapes = profile_shapes(tuple(images.shape), profile)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    for flag in builder_flags_to_clear(trt, precision):
        config.clear_flag(flag)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(opt_profile)
    _set_timing_cache(config, cache_path, stream)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = logger.errors[-1] if logger.errors else "no error was logged"
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path.name}: {detail} "
                          f"(builder log {log_path}).")
    atomic_write_bytes(cache_path, memoryview(config.get_timing_cache().serialize()).cast("B"))
    return memoryview(plan).cast("B")


def build_engine(
    onnx_path: str | os.PathLike[str],
    package_dir: str | os.PathLike[str],
    profile: Profile,
    precision: str,
    workspace_gib: float = 4,
    timing_cache: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Return ``engines/<stem>.plan`` for this ONNX file on this GPU, building it unless cached.

    A hit is returned as is (unless ``force``); a stale slot (tampered or truncated sidecar, plan
    without sidecar, ...) is rebuilt with a warning. The plan is written before its sidecar, both
    atomically, so a sidecar always describes a complete plan. ``timing_cache`` defaults to
    ``engines/timing.cache``, ``log_path`` to ``engines/build-<stem>.log``.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} does not exist; run dga-export first.")
    workspace = workspace_bytes(workspace_gib)
    trt = import_tensorrt()
    gpu_name, capability = gpu_identity()
    key = EngineKey(graph_digest(onnx_path), str(trt.__version__), gpu_name, capability, profile, precision)
    network_flags(trt, precision)  # refuse an unusable TensorRT before touching any file

    decision = check_engine(package_dir, key)
    plan_path, sidecar_path = decision.plan_path, decision.sidecar_path
    if decision.status == "hit" and not force:
        log.info("using cached engine %s (%s)", plan_path, decision.reason)
        return plan_path
    if decision.status == "stale":
        log.warning("rebuilding engine %s: %s", plan_path.name, decision.reason)
    elif decision.status == "hit":
        log.info("rebuilding engine %s because force was given", plan_path.name)

    engines = plan_path.parent
    engines.mkdir(parents=True, exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache is not None else engines / TIMING_CACHE_NAME
    build_log = Path(log_path) if log_path is not None else engines / f"build-{key.stem()}.log"
    build_log.parent.mkdir(parents=True, exist_ok=True)
    with open(build_log, "w", encoding="utf-8") as stream:
        stream.write(f"[dga] building {plan_path.name} from {onnx_path} with key {key.to_json()}\n")
        plan = _build_plan(trt, onnx_path, profile, precision, workspace, cache_path, stream, build_log)
        atomic_write_bytes(plan_path, plan)
        write_sidecar(sidecar_path, key, plan)
        stream.write(f"[dga] wrote {plan_path} ({plan.nbytes} bytes) and {sidecar_path.name}\n")
    log.info("built engine %s (%d bytes)", plan_path, plan.nbytes)
    return plan_path
