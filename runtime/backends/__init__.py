"""Backends behind one small interface (Polygraphy-style runners): images in, logits + probs out.

Each runner takes uint8 images [B, S0, S0, 3] (B <= its max batch) and returns
``(logits, probs)`` as float32 numpy arrays [B, C]. ``open_runner`` picks one by name:
tensorrt (an engine), onnxruntime (the ONNX graph), torch (the reference module from the bundle,
fp32) and torch-cuda (that module in fp16 on a CUDA GPU with CUDA graphs, no TensorRT needed;
it also takes uint8 torch tensors already on the GPU).
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np

from dga.errors import PackageError
from dga.runtime.package import DeployPackage


def tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch", "torch-cuda")


class Runner(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    precision: str
    max_batch: int
    on_cpu: bool  # computes on the CPU cores, which the decode threads then share

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


def onnxruntime_gpu() -> bool:
    """Whether this onnxruntime build offers a GPU provider (asks ONNX Runtime, never torch: probing
    through torch would load the training stack into a runtime-only process)."""
    import onnxruntime as ort

    return any(p in ort.get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))


def torch_cuda() -> bool:
    """Whether torch sees a CUDA GPU; only for the backends that run on torch anyway."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def default_precision(package: DeployPackage, on_gpu: bool) -> str:
    """fp16 on a GPU when the package has it; fp32 on the CPU (fp16 is slow there)."""
    return "fp16" if on_gpu and "fp16" in package.precisions() else "fp32"


def open_runner(package: DeployPackage, backend: str = "auto", precision: str = "auto", device: int = 0,
                threads: int | None = None) -> Runner:
    if backend not in BACKENDS:
        raise PackageError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if backend == "auto" and tensorrt_importable():
        from dga.runtime.backends.tensorrt import TensorRTRunner

        try:
            return TensorRTRunner(package, default_precision(package, True) if precision == "auto" else precision,
                                  device)
        except PackageError:
            pass  # no GPU, or no engine for this GPU yet: fall back to ONNX Runtime below
    if backend == "tensorrt":
        from dga.runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(package, default_precision(package, True) if precision == "auto" else precision, device)
    if backend == "torch":
        from dga.runtime.backends.torch_ref import TorchRunner

        return TorchRunner(package, device="cuda" if torch_cuda() else "cpu")
    if backend == "torch-cuda":
        from dga.runtime.backends.torch_cuda import TorchCudaRunner

        return TorchCudaRunner(package, "fp16" if precision == "auto" else precision, device)
    from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner

    if precision == "auto":
        precision = default_precision(package, onnxruntime_gpu())
    return OnnxRuntimeRunner(package, precision, device, threads=threads)
