"""The GPU suite: ``python -m dga.bench.gpu --device cuda|cpu --out DIR`` (bench/gpu_suite.sh wraps it).

One run on one device, bounded by a time budget, on a DGA model (its 7 default views) built on
the host with random weights (ViT-B-16 by default: no download, no bundle, no exported package):

- model-only at each batch size: the papers' eager per-view loop in fp16 (autocast) against the
  fused deployment module in fp16 as the torch-cuda runner runs it: with the exported graph's
  explicit-matmul attention, with torch's fused attention kernel, with CUDA graphs per batch
  bucket, and under ``torch.compile`` where it works; images/s, views/s, and the fraction of the
  device's measured fp16 matmul peak (a large torch.matmul) the encoder FLOPs reach;
- end-to-end over a folder of generated JPEGs of mixed sizes: the input pipeline with nvJPEG
  decoding (torchvision.io.decode_jpeg on the GPU; the CPU decode threads with ``--device cpu``)
  feeding the CUDA-graph runner, the same with the decoded pixels kept on the device, and decode
  alone, next to model-only at that batch.

What does not fit into the budget is listed under ``skipped`` with the reason; torch.compile
(slow to compile) runs last, and the JSON is rewritten atomically after every phase, so a run
stopped from outside keeps what it measured. The result goes to ``DIR/gpu-<device>-<date>.json``
with the command that produced it. ``--device cpu`` runs the same code on the CPU (CI, tests).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

NEEDED = {  # module -> what to install; the wrapper and ``missing_modules`` check these first
    "numpy": "numpy", "PIL": "pillow", "torch": "torch (with CUDA for --device cuda)",
    "torchvision": "torchvision built for the installed torch (nvJPEG decoding; open_clip needs it)",
    "open_clip": "open_clip_torch, ftfy, wcwidth, regex and tqdm (the model code)",
    "safetensors": "safetensors", "scipy": "scipy (the DGA hierarchy)",
    "sklearn": "scikit-learn, joblib and threadpoolctl (imported with the training code)",
}
COMPILE_MODES = ("auto", "on", "off")
DEFAULT_CLASSES = 32  # two hierarchy levels (8 and 2 groups) by DGA's default level sizes: 7 views
FIRST_COMPILE_GUESS_S = 90.0  # before the first torch.compile has been timed on this host
EAGER = "eager per-view loop"
FUSED_MATMUL = "fused, explicit-matmul attention"
FUSED = "fused"
FUSED_GRAPHS = "fused, CUDA graphs"
FUSED_COMPILE = "fused, torch.compile"


@dataclass
class GpuSuiteOptions:
    device: str = "cuda"  # cuda | cuda:N | cpu
    batches: list[int] = field(default_factory=lambda: [1, 8, 64, 256])
    budget_s: float = 420.0
    backbone: str = "ViT-B-16"
    classes: int = DEFAULT_CLASSES
    precision: str = "fp16"
    compile: str = "auto"  # auto: on a GPU only (inductor on a CPU needs a C++ toolchain and minutes)
    e2e_images: int = 512
    e2e_batch: int = 64
    e2e_rounds: int = 3
    workers: int | None = None  # CPU decode threads (the --device cpu pipeline)
    max_config_s: float = 2.0  # each configuration is timed at most about this long
    seed: int = 0
    name: str | None = None  # file stem [gpu-<device>-<date>]
    command: str = ""  # recorded in the JSON

    def validate(self) -> GpuSuiteOptions:
        from dga.errors import ConfigError

        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"--batches {self.batches} must be positive integers")
        if self.precision not in ("fp16", "fp32"):
            raise ConfigError(f"--precision {self.precision!r} must be fp16 or fp32")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile {self.compile!r} must be one of {', '.join(COMPILE_MODES)}")
        if self.budget_s <= 0 or self.e2e_images < 1 or self.e2e_batch < 1 or self.e2e_rounds < 1:
            raise ConfigError("--budget-s, --e2e-images, --e2e-batch and --e2e-rounds must be positive")
        if not (self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device)):
            raise ConfigError(f"--device {self.device!r} must be cuda, cuda:N or cpu")
        return self


def missing_modules() -> list[str]:
    """One line per module the suite needs and cannot import here (imported for real: a module whose
    own dependency is missing counts as missing, with the import error that says which)."""
    import importlib

    out = []
    for module, what in NEEDED.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken binary wheel raising something else
            out.append(f"cannot import {module} ({' '.join(str(exc).split())[:160]}): install {what}")
    return out


class Budget:
    """Seconds left of the run's budget, and how long one more configuration may take."""

    def __init__(self, total_s: float, clock=time.perf_counter):
        self.total_s, self.clock, self.start = total_s, clock, clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def share(self, items_left: int, cap_s: float) -> float:
        """Timing per configuration: a fair part of what is left, at most ``cap_s``, at least 0.05 s."""
        return max(0.05, min(cap_s, 0.5 * self.left() / max(items_left, 1)))


def device_slug(name: str) -> str:
    """A file-name part for a device name: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def matmul_peak(torch, device, dtype, n: int, calls: int = 10) -> float:
    """FLOP/s of back-to-back n x n matmuls (one sync per ``calls`` of them): the practical ceiling."""
    from dga.bench.measure import time_call

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def burst():
        for _ in range(calls):
            a @ b

    timing = time_call(burst, warmup=2, repeat=5, sync=sync)
    return 2 * n**3 * calls / timing["median_s"]


def build_dga(torch, backbone: str, classes: int, device, seed: int):
    """A DGA model with random backbone weights and random prompts, its hierarchy from generated images."""
    from dga.train.backbone import load_backbone
    from dga.train.config import MethodConfig
    from dga.train.methods import PrepareContext, create
    from dga.train.synthetic import sample_images

    bb = load_backbone(backbone, None, seed=seed, device=device)
    names = [f"class {i}" for i in range(classes)]
    cfg = MethodConfig()
    pixels = torch.from_numpy(sample_images(2 * classes, cfg.s0, seed=seed)).permute(0, 3, 1, 2).float() / 255.0
    labels = torch.arange(2 * classes) % classes

    def batches():  # two generated images per class: the class prototypes DGA clusters into levels
        for i in range(0, len(labels), 32):
            yield pixels[i:i + 32], labels[i:i + 32]

    model, _ = create(PrepareContext(bb, names, cfg, {}, batches, seed=seed), "dga")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.stack.programs.copy_(torch.randn(model.stack.programs.shape, generator=g))
    return model.to(device).eval()


def write_json(result: dict, path: Path) -> None:
    from dga.fsutil import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(result, indent=1))


def run_gpu_suite(opts: GpuSuiteOptions, out_dir: Path, log=print) -> Path:
    """Run the suite (module doc) and write ``out_dir/<name>.json``; returns its path."""
    opts.validate()
    with tempfile.TemporaryDirectory(prefix="dga-gpu-suite-") as tmp:
        return _run(opts, Path(out_dir), Path(tmp), log)


def _run(opts: GpuSuiteOptions, out_dir: Path, tmp: Path, log) -> Path:
    import torch

    from dga.bench.measure import machine, time_call
    from dga.bench.reference import PerViewLoop
    from dga.bench.run import encoder_flops, mixed_jpeg_folder
    from dga.errors import ConfigError
    from dga.runtime.backends.torch_cuda import TorchCudaRunner, resolve_device
    from dga.train.synthetic import sample_images

    budget = Budget(opts.budget_s)
    if opts.device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {opts.device} needs a CUDA GPU and torch {torch.__version__} sees none: "
                          "run on a GPU host, or with --device cpu to check the suite itself")
    device = resolve_device(opts.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None
    dtype = torch.float16 if opts.precision == "fp16" else torch.float32
    gpu_name = torch.cuda.get_device_name(device) if cuda else None
    date = datetime.now(UTC)
    path = out_dir / f"{opts.name or 'gpu-' + device_slug(gpu_name or 'cpu') + '-' + date.strftime('%Y-%m-%d')}.json"
    result: dict = {
        "suite": "gpu", "date": date.isoformat(timespec="seconds"), "command": opts.command,
        "device": str(device), "gpu": gpu_name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "machine": machine(),
        "options": {k: v for k, v in asdict(opts).items() if k != "command"}, "rows": [], "skipped": [],
        "targets": [],
    }
    skipped = result["skipped"]

    log(f"gpu suite on {gpu_name or 'the CPU'} ({device}), torch {torch.__version__}, budget {opts.budget_s:g} s")
    t = time.perf_counter()
    model = build_dga(torch, opts.backbone, opts.classes, device, opts.seed)
    views, s0 = model.stack.num_views, model.stack.s0
    flops_view = encoder_flops(model, device)
    # fp16 matmuls on a CPU are slow (no fp16 units): there a small one, the suite only runs its code
    n = 8192 if cuda else 1024 if dtype == torch.float32 else 256
    peak = matmul_peak(torch, device, dtype, n, calls=10 if cuda else 2)
    result.update({"backbone": opts.backbone, "weights": "random", "method": "dga", "views": views, "s0": s0,
                   "classes": opts.classes, "precision": opts.precision, "setup_s": round(time.perf_counter() - t, 1),
                   "encoder_flops_per_view": flops_view, "flops_per_image": flops_view * views,
                   "peak_matmul_flops_per_s": peak,
                   "peak_matmul": {"n": n, "dtype": str(dtype).removeprefix("torch.")}})
    log(f"  DGA with {views} views on {opts.backbone} (random weights): {flops_view / 1e9:.2f} GFLOP per view; "
        f"{opts.precision} matmul peak {peak / 1e9:.0f} GFLOP/s ({time.perf_counter() - t:.0f} s to set up)")
    if views != 7:
        log(f"  note: {views} views (DGA's default is 7 with {DEFAULT_CLASSES} classes)")

    max_batch = max(max(opts.batches), opts.e2e_batch)
    images = torch.from_numpy(sample_images(max_batch, s0, seed=opts.seed + 1)).to(device)

    def runner(**kw):
        return TorchCudaRunner.for_model(model, opts.classes, max_batch, opts.precision, device, **kw)

    loop = PerViewLoop(model)

    def eager(x):
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=opts.precision == "fp16"):
            return loop(x)

    variants = {EAGER: None, FUSED_MATMUL: runner(cuda_graphs=False, sdpa=False), FUSED: runner(cuda_graphs=False)}
    if cuda:
        variants[FUSED_GRAPHS] = runner(cuda_graphs=True)
    else:
        skipped.append({"what": FUSED_GRAPHS, "why": "CUDA graphs need a CUDA GPU"})
    compile_on = opts.compile == "on" or (opts.compile == "auto" and cuda)
    if not compile_on:
        skipped.append({"what": FUSED_COMPILE, "why": f"--compile {opts.compile}"
                        + (" (auto: on a GPU only)" if opts.compile == "auto" else "")})

    def record(variant: str, b: int, timing: dict) -> dict:
        ips = b / timing["median_s"]
        row = {"kind": "model-only", "variant": variant, "precision": opts.precision, "batch": b,
               "images_per_s": ips, "views_per_s": ips * views, "latency_ms": 1000 * timing["median_s"],
               "p90_ms": 1000 * timing["p90_s"], "calls": timing["calls"],
               "fraction_of_peak": ips * flops_view * views / peak}
        result["rows"].append(row)
        log(f"  {variant:<34} batch {b:>4}: {ips:9.1f} images/s {row['views_per_s']:10.1f} views/s "
            f"{100 * row['fraction_of_peak']:5.1f} % of peak")
        return row

    # 1. model-only: every variant at every batch (compile later: it is the slow one to prepare)
    e2e_passes = 3
    todo = [(v, b) for b in opts.batches for v in variants]
    for i, (variant, b) in enumerate(todo):
        compile_items = len(opts.batches) if compile_on else 0
        if budget.left() < 5:
            skipped.append({"what": f"{variant} batch {b}", "why": "time budget spent"})
            continue
        x = images[:b]
        fn = (lambda x=x: eager(x)) if variants[variant] is None else (lambda r=variants[variant], x=x: r.infer(x))
        per = budget.share(len(todo) - i + e2e_passes + compile_items, opts.max_config_s)
        record(variant, b, time_call(fn, warmup=2, repeat=3, min_time_s=per, sync=sync))
    write_json(result, path)

    # 2. end-to-end from JPEG files, with the CUDA-graph runner (the plain fused one on the CPU)
    e2e_runner = variants.get(FUSED_GRAPHS) or variants[FUSED]
    if budget.left() > 15:
        result["end_to_end"] = end_to_end(torch, e2e_runner, opts, device, s0, images, tmp, budget, sync, views,
                                          mixed_jpeg_folder, log)
    else:
        skipped.append({"what": "end-to-end", "why": "time budget spent"})
    for v in list(variants.values()):
        if v is not None:
            v.close()
    variants.clear()
    if cuda:
        torch.cuda.empty_cache()
    write_json(result, path)

    # 3. torch.compile (reduce-overhead on a GPU), batch by batch while the budget lasts
    if compile_on:
        result["compile"] = compile_rows(torch, runner, opts, images, budget, sync, record, skipped, time_call,
                                         log, ConfigError)
    result["targets"] = targets(result["rows"], opts.precision)
    result["elapsed_s"] = round(budget.elapsed(), 1)
    write_json(result, path)
    for t in result["targets"]:
        log(f"  target {t['what']}: {t['value']:.2f} (target {t['target']:g}) {'met' if t['met'] else 'NOT met'}"
            if t["value"] is not None else f"  target {t['what']}: not measured")
    log(f"wrote {path} ({result['elapsed_s']:.0f} s)")
    return path


def end_to_end(torch, runner, opts: GpuSuiteOptions, device, s0: int, images, tmp: Path, budget: Budget, sync,
               views: int, mixed_jpeg_folder, log) -> dict:
    """Generated JPEGs through the input pipeline into ``runner``, rounds of: pipeline, device-resident,
    decode alone, model-only; medians over rounds."""
    from dga.runtime.gpu_decode import JpegBatchDecoder
    from dga.runtime.pipeline import decoded_batches

    cuda = device.type == "cuda"
    folder = tmp / "jpegs"
    folder.mkdir()
    paths = [str(p) for p in mixed_jpeg_folder(folder, opts.e2e_images, seed=opts.seed)]
    b = opts.e2e_batch
    decoder = JpegBatchDecoder(s0, str(device), draft=True)
    pipeline_decoder = decoder if cuda else None  # --device cpu: the CPU decode threads, as dga-infer there

    def pipeline() -> int:
        done = 0
        for batch in decoded_batches(paths, s0, b, opts.workers, gpu_decoder=pipeline_decoder):
            if len(batch.paths):
                runner.infer(batch.images)
                done += len(batch.paths)
        return done

    def device_resident() -> int:
        done = 0
        for i in range(0, len(paths), b):
            good = [t for t in decoder.decode_on_device(paths[i:i + b]) if isinstance(t, torch.Tensor)]
            if good:
                runner.infer(torch.stack(good))
                done += len(good)
        return done

    def decode_alone() -> int:
        done = 0
        for i in range(0, len(paths), b):
            done += sum(isinstance(t, torch.Tensor) for t in decoder.decode_on_device(paths[i:i + b]))
        if sync:
            sync()
        return done

    calls = max(1, len(paths) // b)
    x = images[:b]

    def model_only() -> int:
        for _ in range(calls):
            runner.infer(x)
        return calls * b

    passes = {"pipeline": pipeline, "device_resident": device_resident, "decode_alone": decode_alone,
              "model_only": model_only}
    pipeline()  # warm up: decoder, graphs of the batch's buckets (the folder's tail is a smaller batch)
    device_resident()
    runs: dict[str, list[float]] = {k: [] for k in passes}
    counts: dict[str, int] = {}
    for r in range(opts.e2e_rounds):
        if r and budget.left() < 10:
            break
        for key, fn in passes.items():
            t = time.perf_counter()
            counts[key] = fn()
            if sync:
                sync()
            runs[key].append(counts[key] / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"images": len(paths), "decoded": counts["pipeline"], "batch": b, "runner": runner.name,
           "cuda_graphs": runner.cuda_graphs, "decode": "nvJPEG (torchvision.io.decode_jpeg)" if cuda else
           "CPU decode threads (pipeline); torchvision on the CPU (device-resident)",
           "jpeg_sides_px": [320, 1280], "rounds": len(runs["pipeline"]),
           "end_to_end_images_per_s": med["pipeline"], "end_to_end_views_per_s": med["pipeline"] * views,
           "device_resident_images_per_s": med["device_resident"], "decode_alone_images_per_s": med["decode_alone"],
           "model_only_images_per_s": med["model_only"], "ratio": med["pipeline"] / med["model_only"],
           "device_resident_ratio": med["device_resident"] / med["model_only"], "round_images_per_s": runs}
    log(f"  end-to-end over {len(paths)} JPEGs, batch {b}: {med['pipeline']:.1f} images/s through the pipeline, "
        f"{med['device_resident']:.1f} with the pixels kept on the device, decode alone {med['decode_alone']:.1f}, "
        f"model-only {med['model_only']:.1f} ({100 * out['ratio']:.0f} % of model-only)")
    return out


def compile_rows(torch, runner, opts, images, budget: Budget, sync, record, skipped, time_call, log,
                 config_error) -> dict:
    """torch.compile'd runner at each batch, while the budget allows another compilation."""
    info: dict = {"mode": None, "compile_s": {}, "error": None}
    try:
        compiled = runner(cuda_graphs=True, compile=True)
    except (RuntimeError, config_error) as exc:
        info["error"] = " ".join(str(exc).split())[:500]
        skipped.append({"what": FUSED_COMPILE, "why": f"torch.compile failed: {info['error']}"})
        return info
    info["mode"] = "reduce-overhead" if compiled.device.type == "cuda" else "default"
    guess = FIRST_COMPILE_GUESS_S
    try:
        for i, b in enumerate(opts.batches):
            if budget.left() < 1.2 * guess:
                why = f"time budget: {budget.left():.0f} s left, a compilation takes about {guess:.0f} s"
                skipped.append({"what": f"{FUSED_COMPILE} batch {b}", "why": why})
                continue
            x = images[:b]
            t = time.perf_counter()
            try:
                compiled.infer(x)
                if sync:
                    sync()
            except Exception as exc:  # inductor / triton failures surface at the first call
                info["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                skipped.append({"what": FUSED_COMPILE, "why": f"torch.compile failed: {info['error']}"})
                break
            info["compile_s"][b] = round(time.perf_counter() - t, 1)
            guess = max(info["compile_s"].values())
            per = budget.share(len(opts.batches) - i, opts.max_config_s)
            record(FUSED_COMPILE, b, time_call(lambda x=x: compiled.infer(x), warmup=2, repeat=3, min_time_s=per,
                                               sync=sync))
    finally:
        compiled.close()
    log(f"  torch.compile ({info['mode']}): compile seconds per batch {info['compile_s']}")
    return info


def targets(rows: list[dict], precision: str = "fp16") -> list[dict]:
    """The GPU goals: best fused >= 3x the eager loop at batch 1 and >= 1.5x at batch 8; >= 50 % of peak at 256."""
    def best(b: int, eager: bool) -> dict | None:
        found = [r for r in rows if r["batch"] == b and (r["variant"] == EAGER) == eager]
        return max(found, key=lambda r: r["images_per_s"]) if found else None

    out = []
    for b, want in ((1, 3.0), (8, 1.5)):
        fused, eager = best(b, False), best(b, True)
        value = fused["images_per_s"] / eager["images_per_s"] if fused and eager else None
        out.append({"what": f"fused / eager per-view loop at batch {b}", "target": want, "value": value,
                    "variant": fused["variant"] if fused else None, "met": value is not None and value >= want})
    fused = best(256, False)
    value = fused["fraction_of_peak"] if fused else None
    out.append({"what": f"fused fraction of the {precision} matmul peak at batch 256", "target": 0.5, "value": value,
                "variant": fused["variant"] if fused else None, "met": value is not None and value >= 0.5})
    return out


def parse_args(argv: list[str]) -> tuple[GpuSuiteOptions, Path]:
    p = argparse.ArgumentParser(prog="python -m dga.bench.gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu [cuda]")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON [bench/results]")
    p.add_argument("--name", default=None, help="file stem [gpu-<device>-<date>]")
    p.add_argument("--batches", default="1,8,64,256", help="comma-separated batch sizes [1,8,64,256]")
    p.add_argument("--budget-s", type=float, default=420.0, help="seconds the whole run may take [420]")
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip model, random weights [ViT-B-16]")
    p.add_argument("--classes", type=int, default=DEFAULT_CLASSES, help=f"classes [{DEFAULT_CLASSES}: 7 views]")
    p.add_argument("--precision", default="fp16", help="fp16 | fp32 [fp16]")
    p.add_argument("--compile", default="auto", help="auto | on | off: torch.compile rows [auto: on a GPU]")
    p.add_argument("--e2e-images", type=int, default=512, help="generated JPEGs for end-to-end [512]")
    p.add_argument("--e2e-batch", type=int, default=64, help="batch size end-to-end [64]")
    p.add_argument("--e2e-rounds", type=int, default=3, help="end-to-end rounds, median reported [3]")
    p.add_argument("--workers", type=int, default=None, help="CPU decode threads [CPU count, at most 8]")
    p.add_argument("--max-config-s", type=float, default=2.0, help="seconds each configuration is timed at most [2]")
    a = p.parse_args(argv)
    try:
        batches = [int(b) for b in a.batches.split(",")]
    except ValueError:
        p.error(f"--batches {a.batches!r} must be comma-separated integers")
    opts = GpuSuiteOptions(device=a.device, batches=batches, budget_s=a.budget_s, backbone=a.backbone,
                           classes=a.classes, precision=a.precision, compile=a.compile, e2e_images=a.e2e_images,
                           e2e_batch=a.e2e_batch, e2e_rounds=a.e2e_rounds, workers=a.workers,
                           max_config_s=a.max_config_s, name=a.name,
                           command="python -m dga.bench.gpu " + shlex.join(argv))
    return opts, a.out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts, out = parse_args(argv)
    missing = missing_modules()
    if missing:
        for line in missing:
            print(f"error: {line}", file=sys.stderr)
        return 2
    from dga.errors import DgaError

    try:
        run_gpu_suite(opts, out)
    except DgaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
