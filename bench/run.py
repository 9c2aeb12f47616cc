"""dga-bench: side by side in one run, on this machine.

- reference: the papers' way, a PyTorch eager loop running the encoder once per view;
- the best torch a user would write: the trained model's own forward, all views stacked into one
  encoder batch through open_clip's encoder, eager and under ``torch.compile``;
- ours: the fused module (one encoder pass over B * V) in torch and the exported graph on every
  available backend and precision (int8 graphs quantized from the fp32 one), at each batch size;
- end-to-end: the Predictor over a folder of generated JPEGs of mixed sizes vs model-only (on the
  CPU also with the decode threads at normal priority), and decode alone on one worker; the CPU
  time of each pass bounds what end-to-end can reach where decode and the model share the same
  cores (``shared_core_ceiling``);
- the physical limit: encoder FLOPs per view x views / measured peak matmul throughput; each row's
  measured FLOP/s as a fraction of it (``roofline``).

Without a bundle, ``--backbone`` builds an untrained DGA bundle of any open_clip backbone on the
embedded benchmark's 24 classes (``bench_bundle``): real shapes, no downloads. ``--budget-s``
plans rounds, batch sizes and the end-to-end folder to finish within a time budget
(``measure.plan_run``); the plan and the wall time of every phase are recorded.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from dga.bench.measure import (
    CHEAP_CALL_S,
    WARMUP_BELOW_S,
    RunPlan,
    StealMeter,
    e2e_warmup_images,
    machine,
    peak_rss_mb,
    plan_run,
    spread,
    time_call,
    wall_and_cpu,
)
from dga.bench.reference import PerViewLoop, StackedViews, compile_module
from dga.bench.render import EAGER, FUSED_TORCH, ONNX, STACKED
from dga.errors import ConfigError
from dga.fsutil import atomic_write
from dga.runtime.pipeline import decoded_batches, default_workers

BACKENDS = ("torch", "torch-stacked", "torch-compile", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int8-static")  # int8: the package's own model.int8.onnx
BUNDLE_CLASSES = "scene-fills-24"  # 24 classes -> 2 hierarchy levels -> DGA's default 7 views


@dataclass
class BenchOptions:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    repeat: int = 5
    min_time_s: float = 1.0  # per round, keep timing each configuration at least this long (noisy machines)
    rounds: int = 5  # interleaved rounds over all configurations; figures are medians over rounds
    e2e_images: int = 512
    e2e_batch: int = 64
    e2e_rounds: int = 8
    workers: int | None = None
    device: str = "auto"
    budget_s: float | None = None  # plan rounds, batch sizes and the end-to-end run to finish within this
    compile_timeout_s: float = 300.0  # torch.compile's first calls (a quarter of the budget at most)
    calib_images: int = 16  # calibration images of the int8-static graph
    command: str | None = None  # the command line that started the run, recorded in the JSON
    started: float | None = None  # time.perf_counter() when the command started (its start-up counts); None: now

    def validate(self) -> BenchOptions:
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ConfigError(f"--backends {','.join(bad)}: choose among {', '.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"--precisions {','.join(bad)}: choose among {', '.join(PRECISIONS)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"--batch-sizes {self.batch_sizes} must be positive integers")
        if self.rounds < 1 or self.repeat < 1 or self.e2e_rounds < 1 or self.e2e_batch < 1 or self.e2e_images < 1:
            raise ConfigError("--rounds, --repeat, --e2e-rounds, --e2e-batch and --e2e-images must be at least 1")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ConfigError(f"--budget-s {self.budget_s:g} must be a positive number of seconds")
        if self.calib_images < 1:
            raise ConfigError(f"--calib-images {self.calib_images} must be at least 1")
        self.batch_sizes = sorted(set(self.batch_sizes))
        return self


@dataclass
class Config:
    """One timed configuration of the table: ``call(b)`` runs it once on the first b benchmark images."""

    kind: str
    backend: str
    precision: str
    call: Callable[[int], object]
    facts: dict = field(default_factory=dict)  # recorded with its rows (CPU chunk, compile time)

    @property
    def label(self) -> str:
        return f"{self.kind} | {self.backend} | {self.precision}"


class Phases:
    """Wall seconds of each phase of the run, in the order they ran; ``started`` (a ``time.perf_counter()``
    value) is when the run began, earlier than now where the command's start-up counts too."""

    def __init__(self, started: float | None = None):
        self.start, self.seconds = time.perf_counter() if started is None else started, {}
        if self.start < time.perf_counter() - 0.5:
            self.seconds["start-up"] = round(time.perf_counter() - self.start, 2)

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 2)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start



def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def encoder_flops(model, device) -> int:
    """FLOPs of one encoder pass on one 224 x 224 view (torch's FLOP counter).

    Counted on the deployed form of the encoder (ExportAttention: explicit matmuls), because the
    counter sees neither nn.MultiheadAttention's fused fast path nor CPU SDPA kernels.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from dga.export.attention import export_friendly

    visual = copy.deepcopy(model.backbone.clip.visual).float().to(device).eval()
    export_friendly(visual)
    size = model.backbone.info.image_size
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        visual(x)
    return int(counter.get_total_flops())


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Measured FLOP/s of a large square matmul per library: the practical ceiling for the encoder.

    On the CPU both libraries are timed because their kernels differ by machine (on the AVX-512 AMD
    VM of 2026-12-02 torch's matmul reached 125 GFLOP/s while the fused graph under ONNX Runtime
    ran at 220): the ceiling is the faster of the two.
    """
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    out = {"torch": 2 * n**3 / time_call(lambda: a @ b, warmup=2, repeat=5, sync=sync)["median_s"]}
    if device.type == "cpu":
        out["onnxruntime"] = _ort_matmul_flops(a.numpy(), b.numpy())
    return out


def _ort_matmul_flops(a: np.ndarray, b: np.ndarray) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = a.shape[0]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the CPU runner
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return 2 * n**3 / time_call(lambda: sess.run(None, {"a": a, "b": b}), warmup=2, repeat=5)["median_s"]


def mixed_jpeg_folder(root: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs of mixed sizes (320..1280 px sides) drawn from the synthetic generator."""
    from PIL import Image

    from dga.train.synthetic import sample_images

    rng = np.random.default_rng(seed)
    base = sample_images(min(n, 64), 256, seed=seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(320, 1281, size=2))
        img = Image.fromarray(base[i % len(base)]).resize((w, h), Image.Resampling.BILINEAR)
        p = root / f"{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def shared_core_ceiling(model_wall_s: float, model_cpu_s: float, decode_cpu_s: float, cores: int) -> float:
    """Best end-to-end / model-only ratio when decode and the model share ``cores`` cores.

    All three arguments are per image: the model alone takes ``model_wall_s`` and keeps the cores
    busy for ``model_cpu_s`` core-seconds (less than ``cores * model_wall_s`` when its threads idle
    at times); decoding takes ``decode_cpu_s``. End-to-end cannot beat the model alone, nor do both
    jobs' work faster than ``cores`` cores can: ``(model_cpu_s + decode_cpu_s) / cores`` per image.
    A run reaches this only if decode fits exactly into every idle moment and slows nothing else.
    """
    best_wall_s = max(model_wall_s, (model_cpu_s + decode_cpu_s) / cores)
    return model_wall_s / best_wall_s



def bench_bundle(backbone: str, pretrained: str | None, out: Path, seed: int = 0) -> Path:
    """An untrained DGA bundle of ``backbone`` on the embedded benchmark's 24 classes, at S0 192.

    Its two hierarchy levels give DGA's default 7 views; the hierarchy is built as dga-train
    builds it, from one generated training image per class; the prompts are their initial
    values and the class texts come from the benchmark's template. Speed does not depend on
    what the prompts learned, so this is the real-size model without a download or a training run.
    """
    from dga.train.backbone import load_backbone
    from dga.train.bundle import save_bundle
    from dga.train.config import MethodConfig
    from dga.train.data.imagefolder import list_images
    from dga.train.data.images import eval_transform, open_rgb
    from dga.train.methods import PrepareContext, create
    from dga.train.scenebench import TEMPLATE, make_benchmark

    data = out.parent / f"{out.stem}-data"
    classnames = make_benchmark(data, per_split={"train": 1}, seed=seed, descriptions=False)
    config = MethodConfig(template=TEMPLATE)
    transform = eval_transform(config.s0)
    items = [(p, classnames.index(Path(p).parent.name)) for p in list_images(data / "train")]

    def train_batches():
        for i in range(0, len(items), 8):
            chunk = items[i:i + 8]
            yield torch.stack([transform(open_rgb(p)) for p, _ in chunk]), torch.tensor([y for _, y in chunk])

    model, cfg = create(PrepareContext(load_backbone(backbone, pretrained, seed=seed), classnames, config, {},
                                       train_batches, seed=seed), "dga")
    training = {"untrained": f"dga-bench --backbone: initial prompts on {BUNDLE_CLASSES}, 1 image per class"}
    return save_bundle(out, model, cfg, classnames, training)


def run_bench(bundle_path: Path | None, opts: BenchOptions, package_path: Path | None = None, log=print,
              backbone: str | None = None, pretrained: str | None = None) -> dict:
    """Time every configuration side by side; the bundle built from ``backbone`` (when no
    ``bundle_path`` is given), the exported package and the JPEG folder live in a temporary
    directory that is removed afterwards, however the run ends."""
    opts.validate()
    if (bundle_path is None) == (backbone is None):
        raise ConfigError("benchmark either a bundle (--ckpt) or an untrained model of a backbone (--backbone)")
    with tempfile.TemporaryDirectory(prefix="dga-bench-") as tmp:
        return _run_bench(bundle_path, opts, package_path, log, Path(tmp), backbone, pretrained)


def _run_bench(bundle_path: Path | None, opts: BenchOptions, package_path: Path | None, log, tmp: Path,
               backbone: str | None, pretrained: str | None) -> dict:
    from dga.export.package import ExportOptions, export_package
    from dga.runtime.package import DeployPackage
    from dga.train.bundle import load_bundle
    from dga.train.synthetic import sample_images

    phase = Phases(opts.started)
    device = _device(opts.device)
    built = None
    if bundle_path is None:
        with phase("bundle"):
            bundle_path = bench_bundle(backbone, pretrained, tmp / "bench.dga")
        built = {"backbone": backbone, "pretrained": pretrained or "none (random init)", "classes": BUNDLE_CLASSES}
        log(f"built an untrained DGA bundle of {backbone} ({built['pretrained']}) in {phase.seconds['bundle']:.0f} s")
    with phase("load"):
        bundle = load_bundle(bundle_path, device)
        model = bundle.model.eval()
    s0, views = bundle.cfg["s0"], model.stack.num_views
    max_b = max(opts.batch_sizes)
    if package_path is None:
        package_path = tmp / "bench.deploy"
        export_max = max(max_b, opts.e2e_batch)
        with phase("export"):
            export_package(bundle_path, package_path, ExportOptions(
                precision="fp16" if "fp16" in opts.precisions else "fp32", max_batch=export_max,
                opt_batch=min(64, export_max), verify=False), log=lambda s: None)
        log(f"exported the package in {phase.seconds['export']:.0f} s")
    package = DeployPackage.load(package_path)
    images = sample_images(max_b, s0, seed=1)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    budget = opts.budget_s
    log(f"benchmark: {bundle.manifest['method']['name']} with {views} views, {bundle.manifest['backbone']['name']}, "
        f"device {device}" + (f", budget {budget:.0f} s" if budget else ""))

    configs, extra = build_configs(model, package, images, opts, device, tmp, phase, log)
    with phase("limit"):
        flops = encoder_flops(model, device)
        peaks = peak_matmul_flops(device, torch.float16 if device.type == "cuda" else torch.float32)
    peak = max(peaks.values())
    limit = {"encoder_flops_per_view": flops, "views": views, "peak_matmul_flops_per_s": peak,
             "peak_matmul_flops_per_s_by_library": peaks, "limit_images_per_s": peak / (flops * views)}

    with phase("estimate"), torch.no_grad():
        call_s = {c.label: estimate_call(lambda c=c: c.call(1), sync) for c in configs}
    e2e_runner = extra["runners"][0] if extra["runners"] else None
    e2e_s = call_s[e2e_runner[0].label] if e2e_runner else 0.0
    requested = RunPlan(list(opts.batch_sizes), opts.rounds, opts.repeat, opts.min_time_s, opts.e2e_images,
                        opts.e2e_batch, opts.e2e_rounds)
    available = None if budget is None else budget - phase.elapsed()
    plan = plan_run(call_s, e2e_s if e2e_runner else 0.0, requested, available)
    if not e2e_runner:
        plan.e2e_images = 0
    log(f"plan: batches {plan.batch_sizes}, {plan.rounds} rounds x {plan.repeat} calls, end-to-end "
        f"{plan.e2e_images} images x {plan.e2e_rounds} rounds, about {plan.estimated_s:.0f} s"
        + (f" of {available:.0f} s left ({', '.join(plan.gave_up) or 'as requested'})" if budget else ""))

    with phase("table"):
        rows, agreement, table_steal = time_table(configs, plan, call_s, limit, sync, log)
    if device.type == "cuda":
        rows_peak = torch.cuda.max_memory_allocated() / 2**20
        for row in rows:
            row["cuda_peak_mb"] = rows_peak  # the run's peak: per-configuration peaks mix across rounds

    # End-to-end: decoding real JPEG files of mixed sizes vs the same engine fed from memory.
    e2e = {}
    if e2e_runner:
        with phase("end_to_end"):
            folder = tmp / "jpegs"
            folder.mkdir()
            paths = mixed_jpeg_folder(folder, plan.e2e_images)
            e2e_opts = replace(opts, e2e_images=plan.e2e_images, e2e_batch=plan.e2e_batch, e2e_rounds=plan.e2e_rounds)
            batch = np.resize(images, (plan.e2e_batch, *images.shape[1:]))
            e2e = end_to_end_rounds(package, e2e_runner[1], paths, batch, e2e_opts, log,
                                    e2e_warmup_images(e2e_s, plan.e2e_batch))
    log(f"  physical limit: {flops / 1e9:.2f} GFLOP/view x {views} views at {peak / 1e9:.0f} GFLOP/s "
        f"-> {limit['limit_images_per_s']:.2f} images/s")
    wall = phase.elapsed()
    log(f"wall time {wall:.0f} s" + (f" (budget {budget:.0f} s)" if budget else ""))
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "command": opts.command,
            "bundle": None if built else str(bundle_path), "bundle_built": built,
            "method": bundle.manifest["method"]["name"], "backbone": bundle.manifest["backbone"]["name"],
            "pretrained": bundle.manifest["backbone"].get("pretrained"), "views": views, "s0": s0,
            "budget_s": budget, "plan": plan.to_json(), "wall_s": round(wall, 1), "phases_s": phase.seconds,
            "cpu_chunks": extra["cpu_chunks"], "compile": extra["compile"], "quantize": extra["quantize"],
            "rows": rows, "agreement": agreement, "end_to_end": e2e, "limit": limit, "cpu_steal_table": table_steal}


def estimate_call(fn: Callable[[], object], sync) -> float:
    """Seconds of one call at batch 1, what the plan is made from; the first call is also the warm-up
    of batch 1, and a cheap one is timed again (the first call of a configuration allocates)."""
    first = time_call(fn, warmup=0, repeat=1, sync=sync)["median_s"]
    if first >= CHEAP_CALL_S:
        return first  # a cold call overestimates a little: the plan errs on the short side
    return time_call(fn, warmup=0, repeat=3, sync=sync)["median_s"]


def build_configs(model, package, images: np.ndarray, opts: BenchOptions, device: torch.device, tmp: Path,
                  phase: Phases, log) -> tuple[list[Config], dict]:
    """Every configuration of the table, built and (for torch.compile) compiled; int8 graphs quantized."""
    from dga.export.deploy_module import DeployModule

    tensors = {b: torch.from_numpy(images[:b]).to(device) for b in opts.batch_sizes}
    tensors[1] = tensors.get(1, torch.from_numpy(images[:1]).to(device))
    configs = []
    loop = PerViewLoop(model)
    torch_backend = f"torch:{device.type}"
    configs.append(Config(EAGER, torch_backend, "fp32", lambda b: loop(tensors[b])))
    if "torch-stacked" in opts.backends or "torch-compile" in opts.backends:
        stacked = StackedViews(model).to(device).eval()
        if "torch-stacked" in opts.backends:
            configs.append(Config(STACKED, torch_backend, "fp32", lambda b: stacked(tensors[b])))
    compile_facts = None
    if "torch-compile" in opts.backends:
        timeout = opts.compile_timeout_s if opts.budget_s is None else min(opts.compile_timeout_s, opts.budget_s / 4)
        with phase("compile"):
            examples = sorted(tensors)[:2]  # batch 1 and one more: every larger size reuses the second graph
            compiled, compile_facts = compile_module(stacked, [tensors[b] for b in examples], timeout)
        if compiled is None:
            log(f"  {compile_facts['error']} (after {compile_facts['compile_s']:.0f} s): no torch.compile rows")
        else:
            log(f"  torch.compile: {compile_facts['compile_s']:.0f} s (first calls at batch {examples})")
            configs.append(Config(STACKED, f"{torch_backend} compiled", "fp32", lambda b: compiled(tensors[b]),
                                  {"compile_s": compile_facts["compile_s"]}))
    if "torch" in opts.backends:
        fused = DeployModule(model, "fp32").to(device).eval()
        configs.append(Config(FUSED_TORCH, torch_backend, "fp32", lambda b: fused(tensors[b])[0]))
        if device.type == "cuda":
            def autocast_call(b):
                with torch.autocast("cuda", dtype=torch.float16):
                    return fused(tensors[b])[0]
            configs.append(Config(FUSED_TORCH, "torch:cuda autocast", "fp16", autocast_call))
    runners, chunks, quantized = [], {}, {}
    if "onnxruntime" in opts.backends:
        for precision in opts.precisions:
            runner = onnx_runner(package, precision, images, opts, tmp, phase, quantized, log)
            if runner is None:
                continue
            config = Config(ONNX, runner.name, precision, lambda b, r=runner: r.infer(images[:b])[0])
            if runner.on_cpu:
                chunks[precision] = {"chunk": runner.chunk, **runner.chunk_choice}
                config.facts["cpu_chunk"] = runner.chunk
                log(f"  {runner.name} {precision}: {runner.chunk or 'whole batch'} images per call "
                    f"({runner.chunk_choice['source']})")
            configs.append(config)
            runners.append((config, runner))
    return configs, {"runners": runners, "cpu_chunks": chunks, "compile": compile_facts, "quantize": quantized}


def onnx_runner(package, precision: str, images: np.ndarray, opts: BenchOptions, tmp: Path, phase: Phases,
                quantized: dict, log):
    """The ONNX Runtime runner of one precision; int8-dynamic / int8-static graphs are quantized from the
    package's fp32 graph first (export/quantize.py), with their time recorded in ``quantized``."""
    from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner

    if not precision.startswith("int8-"):
        if precision not in package.precisions():
            raise ConfigError(f"--precisions {precision}: the package has only {', '.join(package.precisions())}")
        with phase("runners"):
            return OnnxRuntimeRunner(package, precision)
    from dga.export.quantize import quantize_int8
    from dga.train.synthetic import sample_images

    mode = precision.removeprefix("int8-")
    calib = sample_images(opts.calib_images, package.s0, seed=3) if mode == "static" else None
    out = tmp / f"model.{precision}.onnx"
    start = time.perf_counter()
    with phase("quantize"):
        quantize_int8(package.onnx_path("fp32"), out, mode, calib, package.input_name)
    quantized[precision] = {"seconds": round(time.perf_counter() - start, 1),
                            "calibration_images": None if calib is None else len(calib),
                            "bytes": out.stat().st_size}
    log(f"  quantized {precision} in {quantized[precision]['seconds']:.0f} s")
    with phase("runners"):
        return OnnxRuntimeRunner(package, "int8", graph=out)


def time_table(configs: list[Config], plan: RunPlan, call_s: dict[str, float], limit: dict, sync, log):
    """Interleaved rounds over every configuration and batch size of ``plan``; the rows, the top-1
    agreement of every configuration with the eager loop at the largest batch, and the CPU steal."""
    # Every configuration is timed once per round, so a slow spell of a shared machine hits all of
    # them alike; each figure is the median over rounds, each ratio the median of the rounds' ratios.
    timings: dict[tuple[int, int], list[dict]] = {(i, b): [] for i in range(len(configs)) for b in plan.batch_sizes}
    last_b = plan.batch_sizes[-1]
    outputs: dict[int, np.ndarray] = {}

    def timed(i: int, b: int):
        out = configs[i].call(b)
        if b == last_b:
            outputs[i] = out
        return out

    steal = StealMeter().start()
    with torch.no_grad():
        for r in range(plan.rounds):
            for b in plan.batch_sizes:
                for i, c in enumerate(configs):
                    call = call_s[c.label] * b
                    # Round 0 warms up each new batch size (batch 1 was warmed by estimate_call) unless a
                    # call takes seconds; later rounds warm up cheap calls only, whose caches the other
                    # configurations flushed.
                    if r == 0:
                        warmup = 1 if 1 < b and call < WARMUP_BELOW_S else 0
                    else:
                        warmup = 1 if call < CHEAP_CALL_S else 0
                    timings[i, b].append(time_call(lambda i=i, b=b: timed(i, b), warmup=warmup, repeat=plan.repeat,
                                                   min_time_s=plan.min_time_s, sync=sync))
    table_steal = steal.stop()
    flops_per_image = limit["encoder_flops_per_view"] * limit["views"]
    rows = []
    for b in plan.batch_sizes:
        eager = [t["median_s"] for t in timings[0, b]]  # configs[0] is the eager loop
        for i, c in enumerate(configs):
            secs = [t["median_s"] for t in timings[i, b]]
            median_s = float(np.median(secs))
            ratios = [e / s for e, s in zip(eager, secs, strict=True)]
            row = {"kind": c.kind, "backend": c.backend, "precision": c.precision, "batch": b,
                   "images_per_s": b / median_s, "latency_ms": 1000 * median_s,
                   "p90_ms": 1000 * max(t["p90_s"] for t in timings[i, b]), "peak_rss_mb": round(peak_rss_mb(), 1),
                   "rounds_images_per_s": [b / s for s in secs],
                   "ms_per_image": spread([1000 * s / b for s in secs]),
                   "vs_eager": spread(ratios),
                   "roofline": b / median_s * flops_per_image / limit["peak_matmul_flops_per_s"],
                   "calls": sum(t["calls"] for t in timings[i, b]), **c.facts}
            rows.append(row)
            log(f"  {c.kind:<32} {c.backend:<32} {c.precision:<12} batch {b:>4}: {row['images_per_s']:9.2f} "
                f"images/s, {row['vs_eager']['median']:.2f}x eager, roofline {100 * row['roofline']:.0f} %")
    return rows, top1_agreement(configs, outputs, last_b), table_steal


def logits_of(out) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


def top1_agreement(configs: list[Config], outputs: dict[int, object], batch: int) -> list[dict]:
    """Per configuration: share of the images whose top-1 class is the eager loop's (torch fp32), and the
    largest logit difference, on the ``batch`` benchmark images of the largest batch size."""
    if 0 not in outputs:
        return []
    ref = logits_of(outputs[0])
    out = []
    for i, c in enumerate(configs[1:], start=1):
        if i not in outputs:
            continue
        got = logits_of(outputs[i])
        out.append({"kind": c.kind, "backend": c.backend, "precision": c.precision, "images": batch,
                    "top1_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
                    "max_abs_logit_diff": float(np.abs(got - ref).max())})
    return out


def end_to_end_rounds(package, runner, paths: list[Path], batch: np.ndarray, opts: BenchOptions, log=print,
                      warmup_images: int | None = None) -> dict:
    """The ``Predictor`` over ``paths`` next to the same runner fed ``batch`` from memory, in rounds.

    Each round times model-only, end-to-end with the decode priority the Predictor picks (``auto``)
    and, where that is "low" (the model computes on the CPU), end-to-end at normal priority too, in
    an order that rotates from round to round; then decode alone on one worker. A ratio is the
    median of the rounds' own ratios: the speed of a shared VM wanders by +-20 % within minutes,
    and a pair timed side by side shares most of that drift.
    """
    from dga.runtime.predictor import Predictor

    s0 = package.s0
    warmup_images = opts.e2e_batch if warmup_images is None else warmup_images
    predictors = {"auto": Predictor(package, runner, topk=5, batch_size=opts.e2e_batch, workers=opts.workers)}
    if predictors["auto"].background_decode:
        predictors["normal"] = Predictor(package, runner, topk=5, batch_size=opts.e2e_batch, workers=opts.workers,
                                         decode_priority="normal")
    list(predictors["auto"].iter_results(paths[:warmup_images]))  # warm up
    model_calls = max(1, len(paths) // opts.e2e_batch)
    counted = {}

    def end_to_end(key: str) -> int:
        counted[key] = sum(1 for r in predictors[key].iter_results(paths) if r.ok)
        return counted[key]

    def model_only() -> int:
        for _ in range(model_calls):
            runner.infer(batch)
        return len(batch) * model_calls

    def decode_alone() -> int:
        return sum(len(b.images) for b in decoded_batches(paths, s0, opts.e2e_batch, workers=1))

    passes = {"model_only": model_only, **{f"end_to_end_{k}": lambda k=k: end_to_end(k) for k in predictors}}
    order = list(passes)  # rotated each round; decode alone always comes last
    passes["decode_one_worker"] = decode_alone
    runs: dict[str, list[float]] = {k: [] for k in passes}
    cores_busy: dict[str, list[float]] = {k: [] for k in runs}
    ceilings, decode_cpu_ms, steal = [], [], []
    cores = os.cpu_count() or 1
    for r in range(opts.e2e_rounds):
        meter = StealMeter().start()
        per_image = {}  # key -> (wall s, CPU s) per image in this round
        for key in [*order[r % len(order):], *order[:r % len(order)], "decode_one_worker"]:
            n, wall, cpu = wall_and_cpu(passes[key])
            runs[key].append(n / wall)
            cores_busy[key].append(cpu / wall)
            per_image[key] = (wall / n, cpu / n)
        steal.append(meter.stop())
        decode_cpu_ms.append(1000 * per_image["decode_one_worker"][1])
        ceilings.append(shared_core_ceiling(*per_image["model_only"], per_image["decode_one_worker"][1], cores))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    ratios = [e / m for e, m in zip(runs["end_to_end_auto"], runs["model_only"], strict=True)]
    e2e = {"images": counted["auto"], "batch": opts.e2e_batch, "backend": runner.name, "precision": runner.precision,
           "end_to_end_images_per_s": med["end_to_end_auto"], "model_only_images_per_s": med["model_only"],
           "ratio": float(np.median(ratios)), "ratio_of_medians": med["end_to_end_auto"] / med["model_only"],
           "round_ratios": ratios, "decode_priority": "low" if predictors["auto"].background_decode else "normal",
           "decode_one_worker_images_per_s": med["decode_one_worker"], "cores": cores,
           "shared_core_ceiling": float(np.median(ceilings)), "round_ceilings": ceilings,
           # how close the pipeline came to what the cores allowed, round by round
           "of_ceiling": float(np.median([r / c for r, c in zip(ratios, ceilings, strict=True)])),
           "decode_cpu_ms_per_image": float(np.median(decode_cpu_ms)),
           "cores_busy": {k: float(np.median(v)) for k, v in cores_busy.items()},
           "rounds": {"end_to_end": runs["end_to_end_auto"], "model_only": runs["model_only"],
                      "decode_one_worker": runs["decode_one_worker"]},
           "decode_workers": predictors["auto"].workers or default_workers(), "jpeg_sides_px": [320, 1280],
           "cpu_steal_per_round": steal,
           # low-priority decode gave way to normal (pipeline.Starvation) during these rounds
           "decode_gave_way": predictors["auto"].starvation.starved}
    log(f"  end-to-end over {e2e['images']} JPEGs (median of {opts.e2e_rounds} rounds): {med['end_to_end_auto']:.1f} "
        f"images/s vs model-only {med['model_only']:.1f}; end-to-end / model-only {100 * e2e['ratio']:.0f} % (the "
        f"rounds' ratios {_percents(ratios)} %, decode at {e2e['decode_priority']} priority)")
    if "normal" in predictors:
        normal = [e / m for e, m in zip(runs["end_to_end_normal"], runs["model_only"], strict=True)]
        e2e["normal_priority"] = {"end_to_end_images_per_s": med["end_to_end_normal"],
                                  "ratio": float(np.median(normal)), "round_ratios": normal,
                                  "rounds": runs["end_to_end_normal"]}
        log(f"  same rounds, decode at normal priority: {med['end_to_end_normal']:.1f} images/s, "
            f"{100 * e2e['normal_priority']['ratio']:.0f} % of model-only")
    busy = e2e["cores_busy"]
    log(f"  decode alone on 1 worker {med['decode_one_worker']:.0f} images/s, {e2e['decode_cpu_ms_per_image']:.2f} "
        f"CPU ms per image; cores busy: model-only {busy['model_only']:.2f}, end-to-end {busy['end_to_end_auto']:.2f} "
        f"of {cores}; ceiling with shared cores {100 * e2e['shared_core_ceiling']:.0f} %, end-to-end reached "
        f"{100 * e2e['of_ceiling']:.0f} % of it")
    return e2e



def _percents(ratios: list[float]) -> str:
    return ", ".join(f"{100 * x:.0f}" for x in ratios)


def markdown(result: dict, name: str = "run") -> str:
    """NAME.md: the run's section of the results page, rendered by the same code (bench/render.py)."""
    from dga.bench.render import render_bench

    lines = render_bench(Path(f"{name}.json"), result, f"{name}.json")
    return "\n".join([f"# dga-bench: {result['method']} ({result['views']} views), {result['backbone']}", "",
                      *lines[2:]]).rstrip("\n") + "\n"


def write_results(result: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write(js, json.dumps(result, indent=1))
    atomic_write(md, markdown(result, name))
    return js, md


def default_name(result: dict) -> str:
    """File stem when none is given: bench-<method>-<gpu|cpu>."""
    return f"bench-{result['method']}-{'gpu' if result['machine'].get('gpu') else 'cpu'}"


def bench_to_files(bundle_path: Path | None, opts: BenchOptions, out_dir: Path, name: str | None = None,
                   package_path: Path | None = None, log=print, backbone: str | None = None,
                   pretrained: str | None = None) -> tuple[Path, Path]:
    """dga-bench: ``run_bench`` then ``write_results`` (NAME.json and NAME.md side by side in ``out_dir``)."""
    result = run_bench(bundle_path, opts, package_path, log=log, backbone=backbone, pretrained=pretrained)
    return write_results(result, out_dir, name or default_name(result))
