"""ONNX Runtime runner: TensorRT EP, then CUDA EP with IO binding, then the CPU EP."""

from __future__ import annotations

import logging

import numpy as np

from dga.errors import PackageError
from dga.runtime.package import DeployPackage

log = logging.getLogger("dga.runtime")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# On the CPU EP the graph is called on slices of at most this many images: the per-image
# throughput of the fused graph is highest at 2-4 images per call (64 images/s on the 2-core VM,
# bench/results) and falls to 50-56 at 16-64, where a 6-view stack's activations outgrow the
# caches. GPUs want the opposite (one large call), so GPU providers never slice.
CPU_CHUNK = 4


def provider_chain(available: list[str], precision: str, device: int) -> list:
    """Best-first providers among those this onnxruntime build offers."""
    chain: list = []
    if "TensorrtExecutionProvider" in available:
        chain.append(("TensorrtExecutionProvider", {"device_id": device, "trt_fp16_enable": precision == "fp16"}))
    if "CUDAExecutionProvider" in available:
        chain.append(("CUDAExecutionProvider", {"device_id": device}))
    chain.append("CPUExecutionProvider")
    return chain


def optimisation_level(precision: str, on_gpu: bool) -> str:
    # ONNX Runtime 1.32's CPU EP can crash the process loading fp16 graphs at ORT_ENABLE_ALL.
    return "extended" if precision == "fp16" and not on_gpu else "all"


class OnnxRuntimeRunner:
    def __init__(self, package: DeployPackage, precision: str = "fp32", device: int = 0,
                 threads: int | None = None, providers: list | None = None, cpu_chunk: int = CPU_CHUNK):
        import onnxruntime as ort

        self.package, self.precision = package, precision
        path = package.onnx_path(precision)
        chain = providers or provider_chain(ort.get_available_providers(), precision, device)
        on_gpu = any((p[0] if isinstance(p, tuple) else p) in GPU_PROVIDERS for p in chain)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimisation_level(precision, on_gpu)]
        if threads:
            opts.intra_op_num_threads = threads
        if not on_gpu:
            # Idle ORT threads busy-wait by default; on a CPU shared with decode workers that spinning
            # takes the cores the next batch's decode needs (end-to-end 86 % -> 98 % of model-only here).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=chain)
        except Exception as exc:  # a GPU provider whose libraries are missing: fall back to the CPU
            if chain == ["CPUExecutionProvider"]:
                raise PackageError(f"onnxruntime cannot load {path}: {exc}") from exc
            log.warning("onnxruntime GPU providers failed (%s); using the CPU", str(exc).splitlines()[0])
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.name = f"onnxruntime:{self.provider}"
        self.device = device
        self.max_batch = package.max_batch
        self.use_binding = self.provider in GPU_PROVIDERS
        self.on_cpu = not self.use_binding
        self.chunk = None if self.use_binding else max(1, int(cpu_chunk))
        self.input_name = package.input_name

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if not self.use_binding:
            parts = [self.session.run(["logits", "probs"], {self.input_name: images[i:i + self.chunk]})
                     for i in range(0, max(len(images), 1), self.chunk)]  # an empty batch: one empty call
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        import onnxruntime as ort

        # IO binding: the uint8 batch is copied to the GPU once; outputs stay there until fetched.
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(images, "cuda", self.device))
        binding.bind_output("logits", "cuda", self.device)
        binding.bind_output("probs", "cuda", self.device)
        self.session.run_with_iobinding(binding)
        logits, probs = binding.copy_outputs_to_cpu()
        return logits, probs

    def close(self) -> None:
        self.session = None
