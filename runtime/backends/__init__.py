"""Backends behind one small interface (Polygraphy-style runners): images in, logits + probs out.

Each runner takes uint8 images [B, S0, S0, 3] (B <= its max batch) and returns
``(logits, probs)`` as float32 numpy arrays [B, C]. ``open_runner`` picks one by name.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dga.errors import PackageError
from dga.runtime.package import DeployPackage

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


class Runner(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    precision: str
    max_batch: int
    on_cpu: bool  # computes on the CPU cores, which the decode threads then share

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


def cuda_available() -> bool:
    """Whether a CUDA GPU is usable (torch if installed, else ONNX Runtime's providers)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()


def default_precision(package: DeployPackage, on_gpu: bool) -> str:
    """fp16 on a GPU when the package has it; fp32 on the CPU (fp16 is slow there)."""
    return "fp16" if on_gpu and "fp16" in package.precisions() else "fp32"


def open_runner(package: DeployPackage, backend: str = "auto", precision: str = "auto", device: int = 0,
                threads: int | None = None) -> Runner:
    if backend not in BACKENDS:
        raise PackageError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    on_gpu = cuda_available()
    if precision == "auto":
        precision = default_precision(package, on_gpu)
    if backend == "auto":
        if on_gpu:
            from dga.runtime.backends.tensorrt import TensorRTRunner, tensorrt_importable

            if tensorrt_importable():
                try:
                    return TensorRTRunner(package, precision, device)
                except PackageError:
                    pass  # no engine for this GPU yet: fall back to ONNX Runtime below
        backend = "onnxruntime"
    if backend == "tensorrt":
        from dga.runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(package, precision, device)
    if backend == "torch":
        from dga.runtime.backends.torch_ref import TorchRunner

        return TorchRunner(package, device="cuda" if on_gpu else "cpu")
    from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(package, precision, device, threads=threads)
