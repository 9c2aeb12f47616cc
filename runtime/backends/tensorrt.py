"""TensorRT runner: a cached engine from the package, ``execute_async_v3`` on a CUDA stream.

Written against the TensorRT 10 and 11 Python APIs (name-based tensor I/O; no bindings API).
torch provides the CUDA buffers and stream (allocated once, for the engine's max batch); CUDA
graphs are captured per batch size when ``cuda_graphs`` is on, since shapes repeat in a run.
NOT run in the build environment (no TensorRT, no GPU): the engine lookup is tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dga.errors import PackageError
from dga.runtime.backends import tensorrt_importable
from dga.runtime.engine_key import (
    EngineKey,
    EngineSpecError,
    Profile,
    check_engine,
    find_foreign,
    list_sidecars,
    read_sidecar,
)
from dga.runtime.package import DeployPackage


def find_engine(package: DeployPackage, precision: str, trt_version: str, gpu_name: str,
                capability: str) -> tuple[EngineKey, str]:
    """The engine of this package for this GPU/TensorRT/precision (any batch profile), or a clear error."""
    onnx_sha = package.graph_digest(precision)
    if onnx_sha is None:
        raise PackageError(f"{package.path} has no {precision} graph to match an engine against")
    batch = package.facts.get("batch", {})
    wanted = EngineKey(onnx_sha, trt_version, gpu_name, capability,
                       Profile(1, int(batch.get("opt", 64)), int(batch.get("max", 256))), precision)
    candidates = [wanted]
    for sidecar in list_sidecars(package.path):  # same engine built with another batch profile
        try:
            key = read_sidecar(sidecar).key
        except EngineSpecError:
            continue
        if (key.onnx_sha256, key.trt_version, key.gpu_name, key.compute_capability, key.precision) == (
                onnx_sha, trt_version, gpu_name, capability, precision) and key != wanted:
            candidates.append(key)
    for key in candidates:
        decision = check_engine(package.path, key)
        if decision.status == "hit":
            return key, str(decision.plan_path)
    foreign = find_foreign(package.path, wanted)
    hint = foreign[0].message() if foreign else f"build one with dga-export --ckpt BUNDLE --out {package.path} --engine"
    raise PackageError(f"no TensorRT {precision} engine in {package.path} for {gpu_name} with TensorRT "
                       f"{trt_version}: {hint}")


class TensorRTRunner:
    def __init__(self, package: DeployPackage, precision: str = "fp16", device: int = 0, cuda_graphs: bool = True):
        if not tensorrt_importable():
            raise PackageError("TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU), "
                               "or use --backend onnxruntime")
        try:
            import torch  # CUDA buffers and stream
        except ImportError as exc:
            raise PackageError("the tensorrt backend needs torch for its CUDA buffers: pip install torch, "
                               "or use --backend onnxruntime") from exc
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise PackageError("the tensorrt backend needs a CUDA GPU; use --backend onnxruntime")
        self.torch, self.trt = torch, trt
        self.device = torch.device("cuda", device)
        props = torch.cuda.get_device_properties(self.device)
        key, plan_path = find_engine(package, precision, trt.__version__, props.name, f"{props.major}.{props.minor}")
        # The engine is keyed on the graph's sha256 as deploy.json records it; hashing the graph (and
        # checking the manifest digest it carries) binds deploy.json's facts (classes, S0) to the engine.
        package.onnx_path(precision)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with open(plan_path, "rb") as fh:
            self.engine = self.runtime.deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise PackageError(f"TensorRT could not deserialize {plan_path}; rebuild it with dga-export --engine")
        self.context = self.engine.create_execution_context()
        self.name, self.precision = f"tensorrt:{props.name}", precision
        self.max_batch = key.profile.max_batch
        self.on_cpu = False
        self.input_name = package.input_name
        s0, c = package.s0, len(package.classnames)
        # Buffers allocated once for the largest batch; smaller batches use their leading rows.
        self.buffers = {
            self.input_name: torch.empty((self.max_batch, s0, s0, 3), dtype=torch.uint8, device=self.device),
            "logits": torch.empty((self.max_batch, c), dtype=torch.float32, device=self.device),
            "probs": torch.empty((self.max_batch, c), dtype=torch.float32, device=self.device),
        }
        self.host_in = torch.empty((self.max_batch, s0, s0, 3), dtype=torch.uint8).pin_memory()
        self.stream = torch.cuda.Stream(self.device)
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[int, Any] = {}

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        b = len(images)
        if b > self.max_batch:
            raise ValueError(f"batch {b} is larger than the engine's max batch {self.max_batch}")
        self.host_in[:b].copy_(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)))
        with torch.cuda.stream(self.stream):
            self.buffers[self.input_name][:b].copy_(self.host_in[:b], non_blocking=True)
            self.context.set_input_shape(self.input_name, (b, *images.shape[1:]))
            if self.cuda_graphs:
                graph = self.graphs.get(b)
                if graph is None:
                    self._enqueue()  # first run at this shape initialises TensorRT's state
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        self._enqueue()
                    self.graphs[b] = graph
                graph.replay()
            else:
                self._enqueue()
            logits = self.buffers["logits"][:b].to("cpu", non_blocking=True)
            probs = self.buffers["probs"][:b].to("cpu", non_blocking=True)
        self.stream.synchronize()
        return logits.numpy(), probs.numpy()

    def close(self) -> None:
        self.graphs.clear()
        self.context = None
        self.engine = None
