"""dga-bench: side by side in one run, on this machine.

- reference: the papers' way, a PyTorch eager loop running the encoder once per view;
- ours: the fused module (one encoder pass over B * V) in torch and the exported graph on every
  available backend, at each batch size;
- end-to-end: the Predictor over a folder of generated JPEGs of mixed sizes vs model-only (on the
  CPU also with the decode threads at normal priority), and decode alone on one worker; the CPU
  time of each pass bounds what end-to-end can reach where decode and the model share the same
  cores (``shared_core_ceiling``);
- the physical limit: encoder FLOPs per view x views / measured peak matmul throughput.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from dga.bench.measure import StealMeter, machine, peak_rss_mb, time_call, wall_and_cpu
from dga.bench.reference import PerViewLoop
from dga.fsutil import atomic_write
from dga.runtime.pipeline import decoded_batches, default_workers


@dataclass
class BenchOptions:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    backends: list[str] = field(default_factory=lambda: ["torch", "onnxruntime"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    repeat: int = 5
    min_time_s: float = 1.0  # per round, keep timing each configuration at least this long (noisy machines)
    rounds: int = 5  # interleaved rounds over all configurations; figures are medians over rounds
    e2e_images: int = 512
    e2e_batch: int = 64
    e2e_rounds: int = 8
    workers: int | None = None
    device: str = "auto"


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


def run_bench(bundle_path: Path, opts: BenchOptions, package_path: Path | None = None, log=print) -> dict:
    """Time every configuration side by side; the exported package and JPEG folder live in a temporary
    directory that is removed afterwards, however the run ends."""
    with tempfile.TemporaryDirectory(prefix="dga-bench-") as tmp:
        return _run_bench(bundle_path, opts, package_path, log, Path(tmp))


def _run_bench(bundle_path: Path, opts: BenchOptions, package_path: Path | None, log, tmp: Path) -> dict:
    from dga.export.deploy_module import DeployModule
    from dga.export.package import ExportOptions, export_package
    from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from dga.runtime.package import DeployPackage
    from dga.train.bundle import load_bundle
    from dga.train.synthetic import sample_images

    device = _device(opts.device)
    bundle = load_bundle(bundle_path, device)
    model = bundle.model.eval()
    s0, views = bundle.cfg["s0"], model.stack.num_views
    if package_path is None:
        package_path = tmp / "bench.deploy"
        max_b = max(max(opts.batch_sizes), opts.e2e_batch)
        export_package(bundle_path, package_path, ExportOptions(max_batch=max_b, opt_batch=min(64, max_b),
                                                                verify=False), log=lambda s: None)
    package = DeployPackage.load(package_path)
    images = sample_images(max(opts.batch_sizes), s0, seed=1)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows: list[dict] = []

    loop = PerViewLoop(model)
    fused = DeployModule(model, "fp32").to(device).eval()
    runners = {}
    if "onnxruntime" in opts.backends:
        for precision in opts.precisions:
            runners[precision] = OnnxRuntimeRunner(package, precision)
    log(f"benchmark: {bundle.manifest['method']['name']} with {views} views, {bundle.manifest['backbone']['name']}, "
        f"device {device}")
    configs = []  # (kind, backend, precision, batch, fn)
    for b in opts.batch_sizes:
        x = torch.from_numpy(images[:b]).to(device)
        configs.append(("eager per-view loop (papers)", f"torch:{device.type}", "fp32", b, lambda x=x: loop(x)))
        if "torch" in opts.backends:
            configs.append(("fused, one encoder pass", f"torch:{device.type}", "fp32", b, lambda x=x: fused(x)))
            if device.type == "cuda":
                def autocast_call(x=x):
                    with torch.autocast("cuda", dtype=torch.float16):
                        return fused(x)
                configs.append(("fused, one encoder pass", "torch:cuda autocast", "fp16", b, autocast_call))
        for precision, runner in runners.items():
            configs.append(("fused ONNX graph", runner.name, precision, b,
                            lambda r=runner, b=b: r.infer(images[:b])))
    # Interleaved rounds: every configuration is timed once per round, so a slow spell of a shared
    # machine hits all of them alike; each figure is the median over rounds.
    timings: list[list[dict]] = [[] for _ in configs]
    steal = StealMeter().start()
    with torch.no_grad():
        for r in range(opts.rounds):
            for i, (*_, fn) in enumerate(configs):
                timings[i].append(time_call(fn, warmup=2 if r == 0 else 1, repeat=opts.repeat,
                                            min_time_s=opts.min_time_s, sync=sync))
    table_steal = steal.stop()
    for (kind, backend, precision, b, _), ts in zip(configs, timings, strict=True):
        median_s = float(np.median([t["median_s"] for t in ts]))
        row = {"kind": kind, "backend": backend, "precision": precision, "batch": b,
               "images_per_s": b / median_s, "latency_ms": 1000 * median_s,
               "p90_ms": 1000 * max(t["p90_s"] for t in ts), "peak_rss_mb": round(peak_rss_mb(), 1),
               "rounds_images_per_s": [b / t["median_s"] for t in ts]}
        rows.append(row)
        log(f"  {kind:<28} {backend:<28} {precision:<5} batch {b:>4}: {row['images_per_s']:9.1f} images/s")
    if device.type == "cuda":
        rows_peak = torch.cuda.max_memory_allocated() / 2**20
        for row in rows:
            row["cuda_peak_mb"] = rows_peak  # the run's peak: per-configuration peaks mix across rounds

    # End-to-end: decoding real JPEG files of mixed sizes vs the same engine fed from memory.
    e2e = {}
    if runners:
        folder = tmp / "jpegs"
        folder.mkdir()
        paths = mixed_jpeg_folder(folder, opts.e2e_images)
        precision = opts.precisions[0]
        e2e = end_to_end_rounds(package, runners[precision], paths, images[:opts.e2e_batch], opts, log)

    flops = encoder_flops(model, device)
    peaks = peak_matmul_flops(device, torch.float16 if device.type == "cuda" else torch.float32)
    peak = max(peaks.values())
    limit = {"encoder_flops_per_view": flops, "views": views, "peak_matmul_flops_per_s": peak,
             "peak_matmul_flops_per_s_by_library": peaks, "limit_images_per_s": peak / (flops * views)}
    log(f"  physical limit: {flops / 1e9:.2f} GFLOP/view x {views} views at {peak / 1e9:.0f} GFLOP/s "
        f"-> {limit['limit_images_per_s']:.0f} images/s")
    chunks = {r.name: r.chunk for r in runners.values() if getattr(r, "chunk", None)}
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "runner_chunks": chunks,
            "bundle": str(bundle_path), "method": bundle.manifest["method"]["name"],
            "backbone": bundle.manifest["backbone"]["name"], "views": views, "s0": s0,
            "rows": rows, "end_to_end": e2e, "limit": limit, "cpu_steal_table": table_steal}


def end_to_end_rounds(package, runner, paths: list[Path], batch: np.ndarray, opts: BenchOptions, log=print) -> dict:
    """The ``Predictor`` over ``paths`` next to the same runner fed ``batch`` from memory, in rounds.

    Each round times model-only, end-to-end with the decode priority the Predictor picks (``auto``)
    and, where that is "low" (the model computes on the CPU), end-to-end at normal priority too, in
    an order that rotates from round to round; then decode alone on one worker. A ratio is the
    median of the rounds' own ratios: the speed of a shared VM wanders by +-20 % within minutes,
    and a pair timed side by side shares most of that drift.
    """
    from dga.runtime.predictor import Predictor

    s0 = package.s0
    predictors = {"auto": Predictor(package, runner, topk=5, batch_size=opts.e2e_batch, workers=opts.workers)}
    if predictors["auto"].background_decode:
        predictors["normal"] = Predictor(package, runner, topk=5, batch_size=opts.e2e_batch, workers=opts.workers,
                                         decode_priority="normal")
    list(predictors["auto"].iter_results(paths[:opts.e2e_batch]))  # warm up
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


def markdown(result: dict) -> str:
    lines = [f"# dga-bench: {result['method']} ({result['views']} views), {result['backbone']}",
             "", f"{result['date']} on {result['machine'].get('gpu') or result['machine']['cpu']} "
             f"({result['machine']['cpu_count']} CPUs), torch {result['machine'].get('torch')}, "
             f"onnxruntime {result['machine'].get('onnxruntime')}", "",
             "| what | backend | precision | batch | images/s | latency ms |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['backend']} | {r['precision']} | {r['batch']} | "
                     f"{r['images_per_s']:.1f} | {r['latency_ms']:.1f} |")
    for backend, chunk in result.get("runner_chunks", {}).items():
        lines += ["", f"{backend} runs the graph on slices of at most {chunk} images per call "
                  "(runtime/backends/onnxruntime.py: CPU_CHUNK)."]
    e = result.get("end_to_end")
    if e:
        lo, hi = e["jpeg_sides_px"]
        lines += ["", f"End-to-end over {e['images']} JPEGs (sides {lo}-{hi} px), "
                  f"{e['backend']} {e['precision']} batch {e['batch']}: {e['end_to_end_images_per_s']:.1f} images/s "
                  f"vs model-only {e['model_only_images_per_s']:.1f} images/s (medians over rounds)."]
        if "round_ratios" not in e:  # results written before rounds were paired
            lines[-1] = lines[-1][:-1] + f", {100 * e['ratio']:.0f} %."
        else:
            lines += ["", f"End-to-end / model-only: **{100 * e['ratio']:.0f} %**, the median of "
                      f"{len(e['round_ratios'])} interleaved rounds' own ratios ({_percents(e['round_ratios'])} %); "
                      f"the ratio of the medians above is {100 * e['ratio_of_medians']:.0f} %. "
                      f"Decode threads at {e['decode_priority']} CPU priority"
                      + (" (they gave way to normal priority during the rounds: the model waited for them)."
                         if e.get("decode_gave_way") else ".")]
        if "normal_priority" in e:
            n = e["normal_priority"]
            lines += ["", "The same rounds with the decode threads at normal priority: "
                      f"{n['end_to_end_images_per_s']:.1f} images/s, **{100 * n['ratio']:.0f} %** of model-only "
                      f"(rounds {_percents(n['round_ratios'])} %)."]
        if "cores_busy" in e:
            busy, ceiling = e["cores_busy"], 100 * e["shared_core_ceiling"]
            lines += ["", "Where the time goes: decode alone on one worker runs at "
                      f"{e['decode_one_worker_images_per_s']:.0f} images/s and costs "
                      f"{e['decode_cpu_ms_per_image']:.2f} ms of CPU per image; the model alone kept "
                      f"{busy['model_only']:.2f} of the {e['cores']} cores busy, end-to-end "
                      f"{busy['end_to_end_auto']:.2f}. Decoding and the model cannot together go faster than the "
                      f"cores do their work, so at best end-to-end would reach about **{ceiling:.0f} %** of "
                      f"model-only here (median of the rounds' ceilings {_percents(e['round_ceilings'])} %; "
                      "bench/run.py: shared_core_ceiling)"
                      + (f"; end-to-end reached {100 * e['of_ceiling']:.0f} % of it (median over the rounds)."
                         if "of_ceiling" in e else ".")]
    steal = [result.get("cpu_steal_table")] + list((e or {}).get("cpu_steal_per_round", []))
    if any(s is not None for s in steal):
        rounds = ", ".join("?" if s is None else f"{100 * s:.0f}" for s in steal[1:])
        table = "?" if steal[0] is None else f"{100 * steal[0]:.0f}"
        lines += ["", f"CPU time the hypervisor gave to others while this run had work (steal, /proc/stat): "
                  f"{table} % during the table" + (f", per end-to-end round {rounds} %" if rounds else "") + "."]
    lim = result["limit"]
    by_lib = lim.get("peak_matmul_flops_per_s_by_library")  # absent in results written before it existed
    peaks = (" (square matmul: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in by_lib.items())
             + " GFLOP/s; the fastest counts)") if by_lib else ""
    lines += ["", f"Physical limit: {lim['encoder_flops_per_view'] / 1e9:.3f} GFLOP per view x {lim['views']} views "
              f"at a measured {lim['peak_matmul_flops_per_s'] / 1e9:.0f} GFLOP/s matmul peak = "
              f"{lim['limit_images_per_s']:.0f} images/s{peaks}."]
    return "\n".join(lines) + "\n"


def _percents(ratios: list[float]) -> str:
    return ", ".join(f"{100 * x:.0f}" for x in ratios)


def write_results(result: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write(js, json.dumps(result, indent=1))
    atomic_write(md, markdown(result))
    return js, md


def default_name(result: dict) -> str:
    """File stem when none is given: bench-<method>-<gpu|cpu>."""
    return f"bench-{result['method']}-{'gpu' if result['machine'].get('gpu') else 'cpu'}"


def bench_to_files(bundle_path: Path, opts: BenchOptions, out_dir: Path, name: str | None = None,
                   package_path: Path | None = None, log=print) -> tuple[Path, Path]:
    """dga-bench: ``run_bench`` then ``write_results`` (NAME.json and NAME.md side by side in ``out_dir``)."""
    result = run_bench(bundle_path, opts, package_path, log=log)
    return write_results(result, out_dir, name or default_name(result))
