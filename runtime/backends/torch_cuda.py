"""torch-cuda runner: the deployment module in torch on a CUDA GPU, fp16, no TensorRT needed.

The module is the one the ONNX graph is exported from (export/deploy_module.py), rebuilt from the
package's bundle by the torch reference runner's loader (``load_bundle_model``), in fp16 (fp32 on
request) with torch's fused attention kernel. Batches are padded to a bucket, a power of two up
to the package's max batch (or the max batch itself), and the result is sliced back: the shapes
then repeat, so one CUDA graph per bucket is captured the first time the bucket is used and then
replayed (or, with ``compile=True``, ``torch.compile`` compiles one program per bucket; with CUDA
graphs on that is its ``reduce-overhead`` mode, which captures graphs itself). Images come in as
uint8 numpy arrays through a pinned host buffer and a non-blocking copy on the runner's stream,
or as uint8 torch tensors, on the host or already on the device (GPU-decoded JPEGs stay there).

With ``device="cpu"`` the same code runs without graphs, pinning or streams: that is how it is
tested on hosts without a GPU. Written against torch's documented CUDA APIs
(``torch.cuda.CUDAGraph``, ``torch.cuda.graph``, ``Tensor.pin_memory``, ``torch.compile``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dga.errors import PackageError
from dga.runtime.backends.torch_ref import load_bundle_model
from dga.runtime.package import DeployPackage

PRECISIONS = ("fp16", "fp32")
WARMUP_CALLS = 2  # eager calls on the capture stream before a graph is captured (lazy init, cuBLAS)


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two below ``max_batch``, then ``max_batch``: 1, 2, 4, ..., max_batch."""
    if max_batch < 1:
        raise ValueError(f"max batch {max_batch} must be at least 1")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


def bucket_for(batch: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``batch`` images."""
    for b in buckets:
        if b >= batch:
            return b
    raise ValueError(f"batch {batch} is larger than the runner's max batch {buckets[-1]}")


def allow_recompiles(torch, shapes: int) -> None:
    """Let torch.compile keep one program per bucket: with ``dynamic=False`` every batch shape is a
    recompilation, and past dynamo's limit (8 by default, fewer than the 9 buckets of max batch 256)
    it would silently run the remaining shapes eagerly."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name in newer / older torch
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), shapes + 1))
            return


class NoCudaError(PackageError):
    """This host has no CUDA GPU for torch: no precision or package of the runner can run here."""

    runner_wide = True  # dga-verify skips the runner's other rows with the same reason


def resolve_device(device):
    """A torch device for ``device`` (a GPU index, "cuda[:N]", "cpu" or a torch.device), or PackageError in
    one sentence."""
    try:
        import torch
    except ImportError as exc:
        raise NoCudaError("the torch-cuda backend needs torch with CUDA: pip install torch, "
                           "or use --backend onnxruntime") from exc
    if not isinstance(device, int) and torch.device(device).type == "cpu":
        return torch.device("cpu")
    index = device if isinstance(device, int) else (torch.device(device).index or 0)
    if not torch.cuda.is_available():
        raise NoCudaError("the torch-cuda backend needs a CUDA GPU and torch sees none "
                           f"(torch {torch.__version__}, torch.cuda.is_available() is False): "
                           "use --backend onnxruntime")
    if not 0 <= index < torch.cuda.device_count():
        raise PackageError(f"GPU {index} does not exist: this host has {torch.cuda.device_count()} "
                           f"(--device 0..{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


class TorchCudaRunner:
    """uint8 images [B, S0, S0, 3] (numpy or torch) -> (logits, probs) float32 numpy [B, C]."""

    def __init__(self, package: DeployPackage, precision: str = "fp16", device: int | str = 0,
                 cuda_graphs: bool = True, compile: bool = False, bundle: str | Path | None = None,
                 sdpa: bool = True):
        dev = resolve_device(device)  # before loading the model: no GPU is the cheaper answer
        if precision not in PRECISIONS:
            raise PackageError(f"the torch-cuda backend runs {' or '.join(PRECISIONS)}, not {precision}")
        model = load_bundle_model(package, bundle, backend="torch-cuda")
        self._build(model, len(package.classnames), package.max_batch, precision, dev, cuda_graphs, compile, sdpa)

    @classmethod
    def for_model(cls, model, num_classes: int, max_batch: int, precision: str = "fp16", device: int | str = 0,
                  cuda_graphs: bool = True, compile: bool = False, sdpa: bool = True) -> TorchCudaRunner:
        """The same runner over a ReprogramModel in memory (benchmarks: no package, no bundle)."""
        if precision not in PRECISIONS:
            raise PackageError(f"the torch-cuda backend runs {' or '.join(PRECISIONS)}, not {precision}")
        runner = cls.__new__(cls)
        runner._build(model, num_classes, max_batch, precision, resolve_device(device), cuda_graphs, compile, sdpa)
        return runner

    def _build(self, model, num_classes: int, max_batch: int, precision: str, device, cuda_graphs: bool,
               compile: bool, sdpa: bool) -> None:
        import torch

        from dga.export.deploy_module import DeployModule

        self.torch, self.device, self.precision = torch, device, precision
        self.on_cpu = device.type == "cpu"
        self.max_batch, self.num_classes = max_batch, num_classes
        self.buckets = batch_buckets(max_batch)
        # sdpa=False keeps the exported graph's explicit attention (benchmarks compare the two).
        self.module = DeployModule(model, precision, sdpa=sdpa).to(device).eval()
        s0 = self.module.s0
        cuda = device.type == "cuda"
        self.name = f"torch-cuda:{torch.cuda.get_device_name(device) if cuda else 'cpu'}"
        # Manual graphs unless torch.compile is asked for: its reduce-overhead mode captures its own.
        self.cuda_graphs = cuda and cuda_graphs and not compile
        self.compiled = compile
        self.forward = self.module
        if compile:
            allow_recompiles(torch, len(self.buckets))
            mode = "reduce-overhead" if cuda and cuda_graphs else "default"
            self.forward = torch.compile(self.module, mode=mode, dynamic=False)
        self._mark_step = compile and cuda and cuda_graphs  # outputs of reduce-overhead are reused per step
        # Device input buffer for the largest bucket; bucket n computes on its first n rows, so the
        # address a graph captured never changes. Rows past the batch keep earlier images (or zeros):
        # every image is computed independently, so they change nothing but are sliced off.
        self.dev_in = torch.zeros((max_batch, s0, s0, 3), dtype=torch.uint8, device=device)
        self.host_in = self.host_logits = self.host_probs = None
        self.stream = self.pool = None
        if cuda:
            self.host_in = torch.empty((max_batch, s0, s0, 3), dtype=torch.uint8).pin_memory()
            self.host_logits = torch.empty((max_batch, num_classes), dtype=torch.float32).pin_memory()
            self.host_probs = torch.empty((max_batch, num_classes), dtype=torch.float32).pin_memory()
            # reduce-overhead keeps its graphs on the caller's stream; everything else gets its own.
            self.stream = torch.cuda.current_stream(device) if self._mark_step else torch.cuda.Stream(device)
            # One memory pool for every bucket's graph: replays run one at a time on one stream and
            # each replay's outputs are copied out before the next, so they may share memory.
            self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self.graphs: dict[int, tuple] = {}  # bucket -> (CUDAGraph, logits, probs) of its captured outputs

    # -- one call ------------------------------------------------------------------------------
    def _stage(self, images, b: int) -> None:
        """The batch into the first ``b`` rows of the device buffer."""
        torch = self.torch
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8:
                raise ValueError(f"images of dtype {images.dtype}: the runner takes uint8")
            if images.device == self.dev_in.device or self.host_in is None:
                self.dev_in[:b].copy_(images)
                return
            src = images if images.is_pinned() else self.host_in[:b].copy_(images)
        else:
            if images.dtype != np.uint8:
                raise ValueError(f"images of dtype {images.dtype}: the runner takes uint8")
            src = torch.from_numpy(np.ascontiguousarray(images))
            if self.host_in is None:  # CPU: the device buffer is host memory
                self.dev_in[:b].copy_(src)
                return
            src = self.host_in[:b].copy_(src)
        self.dev_in[:b].copy_(src, non_blocking=True)

    def _compute(self, n: int):
        """(logits, probs) of the first ``n`` rows of the device buffer, n a bucket."""
        torch = self.torch
        x = self.dev_in[:n]
        if not self.cuda_graphs:
            if self._mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            return self.forward(x)
        captured = self.graphs.get(n)
        if captured is None:
            for _ in range(WARMUP_CALLS):  # on the capture stream, as torch.cuda.graph asks
                self.module(x)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                logits, probs = self.module(x)
            captured = self.graphs[n] = (graph, logits, probs)
        graph, logits, probs = captured
        graph.replay()
        return logits, probs

    def infer(self, images) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        b = len(images)
        if b > self.max_batch:
            raise ValueError(f"batch {b} is larger than the runner's max batch {self.max_batch}")
        s0 = self.dev_in.shape[1]
        if tuple(images.shape[1:]) != (s0, s0, 3):
            raise ValueError(f"images of shape {tuple(images.shape)}: the runner takes [B, {s0}, {s0}, 3]")
        if b == 0:
            return np.zeros((0, self.num_classes), np.float32), np.zeros((0, self.num_classes), np.float32)
        n = bucket_for(b, self.buckets)
        with torch.no_grad():
            if self.stream is None:
                self._stage(images, b)
                logits, probs = self._compute(n)
                return logits[:b].float().numpy().copy(), probs[:b].float().numpy().copy()
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # a caller's device tensor
            with torch.cuda.stream(self.stream):
                self._stage(images, b)
                logits, probs = self._compute(n)
                self.host_logits[:b].copy_(logits[:b], non_blocking=True)
                self.host_probs[:b].copy_(probs[:b], non_blocking=True)
            self.stream.synchronize()
        # Copies: the pinned buffers are overwritten by the next call.
        return self.host_logits[:b].numpy().copy(), self.host_probs[:b].numpy().copy()

    def close(self) -> None:
        self.graphs.clear()
        self.module = self.forward = None
        self.dev_in = self.host_in = self.host_logits = self.host_probs = None
