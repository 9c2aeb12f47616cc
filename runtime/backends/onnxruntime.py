"""ONNX Runtime runner: TensorRT EP, then CUDA EP with IO binding, then the CPU EP."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from dga.errors import ConfigError, PackageError
from dga.fsutil import atomic_write
from dga.runtime.package import DeployPackage, graph_digest

log = logging.getLogger("dga.runtime")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

# On the CPU EP a batch is handed to the graph in slices of at most ``chunk`` images. Which slice
# is fastest depends on the model and the host: a small fused graph runs fastest per image at 2-4
# images per call, while a ViT-B/16-size graph with 7 views per image is fastest one image per
# call (its activations at 2 and more images outgrow the caches: 1.7-1.85 s per image at 1, 1.9-2.1
# at 2, 2.4 at 4 on a 2-core VM). So the chunk is measured once per graph and host and cached.
# GPUs want the opposite (one large call), so GPU providers never slice.
CHUNK_ENV = "DGA_ORT_CPU_CHUNK"  # overrides the measured choice: "auto", "whole" or a positive integer
CHUNK_CACHE_NAME = "ort-chunk.json"
CHUNK_CACHE_ENTRIES = 64  # most recently measured graphs kept in the cache file
CHUNK_PROBE_BUDGET_S = 30.0  # a ViT-B/16-size graph: 1, 2 and 4 images per call fit, 8 do not
CHUNK_TOLERANCE = 0.03  # per-image times closer than this to the fastest count as equally fast
CHEAP_CALL_S = 0.05  # calls shorter than this are timed REPEATS times (the fastest counts)
REPEATS = 3
COSTLY_CALL_S = 1.0  # on calls this long, one size CLEAR_RISE slower per image ends the probe
CLEAR_RISE = 0.10


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


# -- the CPU chunk ----------------------------------------------------------------------------------

def probe_sizes(max_batch: int) -> list[int]:
    """Images per call worth timing: 1, 2, 4, ... and the package's largest batch (the whole batch)."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return sizes + [max(1, max_batch)]


def choose_chunk(per_image_s: dict[int, float]) -> int | None:
    """The largest slice within ``CHUNK_TOLERANCE`` of the lowest time per image (a difference
    smaller than that is timing noise, and a larger slice makes fewer calls); None (no slicing)
    when that is the largest size timed, so that slicing never makes a batch slower than
    handing it over whole."""
    fastest = min(per_image_s.values())
    best = max(n for n, s in per_image_s.items() if s <= fastest * (1 + CHUNK_TOLERANCE))
    return None if best == max(per_image_s) else best


@dataclass
class ChunkProbe:
    chunk: int | None  # images per call; None: the whole batch in one call
    per_image_s: dict[int, float]  # images per call -> seconds per image (fastest of the timed calls)
    spent_s: float  # seconds of graph calls the probe took, warm-up calls included
    skipped: list[int] = field(default_factory=list)  # sizes not timed: past the budget or the turn of the curve


def probe_chunk(call: Callable[[int], float], max_batch: int, budget_s: float = CHUNK_PROBE_BUDGET_S) -> ChunkProbe:
    """Time the graph at 1, 2, 4, ... images per call and choose the chunk (``choose_chunk``).

    ``call(n)`` runs the graph once on ``n`` images and returns its seconds. A cold call, then a
    timed one, of one image give the cost per image; each larger size gets a warm-up call (the
    session's memory grows to it) and a timed one (``REPEATS`` where a call is cheaper than
    ``CHEAP_CALL_S``; the fastest counts). The probe stops before a size whose predicted cost
    (at the one-image cost per image) would take it past ``budget_s``, and after two sizes in a
    row slower per image than the fastest so far (the curve has turned), or after one call of at
    least ``COSTLY_CALL_S`` more than ``CLEAR_RISE`` slower per image.
    """
    sizes = probe_sizes(max_batch)
    spent = call(1)  # the session's first run allocates: not timed
    first = call(1)
    reps = {n: REPEATS if first * n < CHEAP_CALL_S else 1 for n in sizes}
    times = [first] + [call(1) for _ in range(reps[1] - 1)]
    spent += sum(times)
    t1 = min(times)
    per_image = {1: t1}
    rising = 0
    for i, n in enumerate(sizes[1:], start=1):
        if spent + t1 * n * (1 + reps[n]) > budget_s or rising == 2:
            return ChunkProbe(choose_chunk(per_image), per_image, spent, sizes[i:])
        spent += call(n)  # warm-up at this size
        times = [call(n) for _ in range(reps[n])]
        spent += sum(times)
        per_image[n] = min(times) / n
        fastest = min(per_image.values())
        rising = rising + 1 if per_image[n] > fastest * (1 + CHUNK_TOLERANCE) else 0
        if per_image[n] * n >= COSTLY_CALL_S and per_image[n] > fastest * (1 + CLEAR_RISE):
            rising = 2  # a clear rise timed on a long call is not noise: the larger sizes only cost time
    return ChunkProbe(choose_chunk(per_image), per_image, spent, [])


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def chunk_cache_path() -> Path:
    """$XDG_CACHE_HOME/dga/ort-chunk.json, by default ~/.cache/dga/ort-chunk.json."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dga" / CHUNK_CACHE_NAME


def chunk_cache_key(digest: str, precision: str, threads: int | None) -> str:
    """What the measured chunk depends on: the graph, its precision, the threads, the host's CPUs and ONNX Runtime."""
    import onnxruntime as ort

    return (f"{digest}|{precision}|threads={threads or 'default'}|cpus={usable_cpus()}|{cpu_model()}"
            f"|onnxruntime={ort.__version__}")


class ChunkCache:
    """The measured chunks of this host, one JSON object keyed by ``chunk_cache_key`` (atomic writes)."""

    def __init__(self, path: Path | None = None):
        self.path = path or chunk_cache_path()

    def entries(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable chunk cache %s (%s); it will be rewritten", self.path, exc)
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def get(self, key: str) -> dict | None:
        entry = self.entries().get(key)
        if entry is None:
            return None
        chunk = entry.get("chunk", 0)  # an entry without a valid chunk is measured again
        return entry if chunk is None or (type(chunk) is int and chunk >= 1) else None

    def put(self, key: str, entry: dict) -> None:
        entries = self.entries()
        entries[key] = entry
        kept = sorted(entries.items(), key=lambda kv: str(kv[1].get("measured", "")))[-CHUNK_CACHE_ENTRIES:]
        try:
            atomic_write(self.path, json.dumps(dict(kept), indent=1))
        except OSError as exc:  # a read-only home: the choice holds for this process only
            log.warning("could not write the chunk cache %s (%s); the chunk will be measured again next time",
                        self.path, exc)


def parse_chunk(value: int | str | None, where: str) -> int | str | None:
    """"auto", None (the whole batch) or a positive integer, from an argument or the environment."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str) and value.strip().lower() == "whole":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"{where} {value!r} must be auto, whole or a positive number of images per call")
    return n


class OnnxRuntimeRunner:
    def __init__(self, package: DeployPackage, precision: str = "fp32", device: int = 0,
                 threads: int | None = None, providers: list | None = None, cpu_chunk: int | str | None = "auto",
                 chunk_cache: ChunkCache | None = None, graph: Path | None = None):
        """``cpu_chunk``: images per call on the CPU EP; "auto" takes $DGA_ORT_CPU_CHUNK or else the
        chunk measured for this graph and host (``choose_cpu_chunk``); None or "whole": no slicing.
        ``graph``: an ONNX file to run instead of the package's graph of ``precision`` (a variant of it
        with the same inputs and outputs, e.g. one quantized another way, as dga-bench times)."""
        import onnxruntime as ort

        self.package, self.precision, self.graph = package, precision, graph
        path = package.onnx_path(precision) if graph is None else Path(graph)
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
        self.device, self.threads = device, threads
        self.max_batch = package.max_batch
        self.use_binding = self.provider in GPU_PROVIDERS
        self.on_cpu = not self.use_binding
        self.input_name = package.input_name
        self.chunk: int | None = None  # images per call on the CPU; None: the whole batch
        self.chunk_choice: dict = {"source": "gpu"}  # how the chunk was chosen (dga-bench records it)
        if self.on_cpu:
            self.chunk, self.chunk_choice = self.choose_cpu_chunk(cpu_chunk, chunk_cache)

    def choose_cpu_chunk(self, cpu_chunk: int | str | None, cache: ChunkCache | None) -> tuple[int | None, dict]:
        """The argument, else $DGA_ORT_CPU_CHUNK, else the cached measurement, else measure (and cache)."""
        wanted = parse_chunk(cpu_chunk, "cpu_chunk")
        if wanted != "auto":
            return wanted, {"source": "argument"}
        env = os.environ.get(CHUNK_ENV, "").strip()
        if env:
            wanted = parse_chunk(env, f"the environment variable {CHUNK_ENV}=")
            if wanted != "auto":
                return wanted, {"source": "environment"}
        if self.max_batch <= 1:
            return None, {"source": "max batch 1"}
        cache = cache or ChunkCache()
        digest = self.package.graph_digest(self.precision) if self.graph is None else graph_digest(Path(self.graph))
        key = chunk_cache_key(digest or "unknown", self.precision, self.threads)
        entry = cache.get(key)
        if entry is not None:
            return entry["chunk"], {"source": "cache", "cache": str(cache.path), **entry}
        start = time.perf_counter()
        probe = probe_chunk(self.timed_call(), self.max_batch)
        entry = {"chunk": probe.chunk, "per_image_ms": {str(n): 1000 * s for n, s in probe.per_image_s.items()},
                 "skipped_sizes": probe.skipped, "probe_s": round(time.perf_counter() - start, 3),
                 "measured": datetime.now(UTC).isoformat(timespec="seconds")}
        cache.put(key, entry)
        log.info("%s %s: %s images per call on the CPU (per-image ms by size %s); cached in %s", self.name,
                 self.precision, probe.chunk or "all", entry["per_image_ms"], cache.path)
        return probe.chunk, {"source": "measured", "cache": str(cache.path), **entry}

    def timed_call(self) -> Callable[[int], float]:
        """``call(n)``: seconds of one session run on n golden images (tiled), for ``probe_chunk``."""
        try:
            base = self.package.reference(check_hash=False).images
        except PackageError:  # speed does not depend on the pixels: any images of the right shape do
            base = np.zeros((1, self.package.s0, self.package.s0, 3), np.uint8)

        def call(n: int) -> float:
            images = np.ascontiguousarray(np.resize(base, (n, *base.shape[1:])))
            start = time.perf_counter()
            self.session.run(["logits", "probs"], {self.input_name: images})
            return time.perf_counter() - start

        return call

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if not self.use_binding:
            step = self.chunk or max(len(images), 1)
            parts = [self.session.run(["logits", "probs"], {self.input_name: images[i:i + step]})
                     for i in range(0, max(len(images), 1), step)]  # an empty batch: one empty call
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
