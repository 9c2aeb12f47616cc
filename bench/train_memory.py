"""Peak memory and time per DGA training step, per memory configuration (plain, checkpointing, micro-batches).

    python -m dga.bench.train_memory --backbone ViT-B-16 --pretrained none --shots 1
    python -m dga.bench.train_memory --backbone dga-test-vit-p16 --pretrained none --shots 1 --classes 9

Each configuration runs in a child process of its own, so the peaks of one cannot hide in
another's. The child builds a DGA model with the default options (L = 2 levels, E = 2 scales,
J = 2 crops: 7 views) for ``classes`` classes on generated images, then runs ``warmup + steps``
optimiser steps on one batch of ``min(batch_size, classes * shots)`` images through
``Trainer.train_step``, the training loop's own step. It reports the peak resident memory during
the steps (a thread samples /proc/self/statm every few milliseconds; getrusage's lifetime peak
is reported beside it), the CUDA peak where the step ran on a GPU, seconds per step, and the
estimate of dga.train.memory for the same configuration. The result is written to
``bench/results/train-memory-<backbone>.json`` with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from dga.fsutil import atomic_write

RESULTS_DIR = Path("bench/results")
SAMPLE_S = 0.003


def standard_configs(micro_batch: int = 8) -> dict[str, dict]:
    """plain, checkpointing, micro-batch k, and both."""
    return {
        "plain": {"micro_batch": None, "grad_checkpointing": False},
        "checkpointing": {"micro_batch": None, "grad_checkpointing": True},
        f"micro-batch-{micro_batch}": {"micro_batch": micro_batch, "grad_checkpointing": False},
        f"micro-batch-{micro_batch}+checkpointing": {"micro_batch": micro_batch, "grad_checkpointing": True},
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The largest resident set size seen while it runs (a daemon thread; torch ops release the GIL)."""

    def __init__(self):
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, _rss_bytes())


def measure_config(spec: dict) -> dict:
    """One configuration, in this process (the child side): build, step, measure."""
    import torch

    from dga.train.backbone import load_backbone
    from dga.train.config import MethodConfig, TrainConfig
    from dga.train.memory import MemoryPlan, encoder_shape, fixed_bytes, step_bytes
    from dga.train.methods import PrepareContext, create, get_method
    from dga.train.trainer import Trainer, grad_checkpointing, resolve_device

    device = resolve_device(spec["device"])
    backbone = load_backbone(spec["backbone"], spec["pretrained"], seed=0, device=device)
    classes, images = spec["classes"], spec["classes"] * spec["shots"]
    batch = min(spec["batch_size"], images)
    mcfg = MethodConfig()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, mcfg.s0, mcfg.s0, generator=g)
    y = torch.arange(batch) % classes
    ctx = PrepareContext(backbone, [f"class {i}" for i in range(classes)], mcfg, {}, lambda: [(x, y)], seed=1)
    torch.manual_seed(1)
    model, _ = create(ctx, "dga")
    views = model.stack.num_views
    chunk = spec["micro_batch"] or batch
    estimate = step_bytes(encoder_shape(backbone), views, min(chunk, batch), spec["grad_checkpointing"],
                          fixed_bytes(model))
    plan = MemoryPlan(spec["micro_batch"], spec["grad_checkpointing"], None, estimate)
    cfg = TrainConfig(batch_size=batch, device=str(device))
    trainer = Trainer(model, get_method("dga"), cfg, [], [], Path("."), {}, progress=False, memory=plan)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x, y = x.to(device), y.to(device)
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_bytes()
    times = []
    with PeakSampler() as sampler, grad_checkpointing(model, plan.grad_checkpointing):
        for _ in range(spec["warmup"] + spec["steps"]):
            t0 = time.perf_counter()
            trainer.train_step(x, y, opt, scaler, use_amp)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    timed = times[spec["warmup"]:]
    out = {
        "micro_batch": spec["micro_batch"], "grad_checkpointing": spec["grad_checkpointing"],
        "batch": batch, "views": views, "device": str(device), "torch_threads": torch.get_num_threads(),
        "seconds_per_step": round(sum(timed) / len(timed), 4), "step_seconds": [round(t, 4) for t in times],
        "peak_rss_bytes": sampler.peak, "rss_before_steps_bytes": rss_before,
        "step_rss_bytes": sampler.peak - rss_before,
        "lifetime_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        "estimate_bytes": estimate,
    }
    if device.type == "cuda":
        out["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        out["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return out


def _run_child(spec: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "dga.bench.train_memory", "--child", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout_s:.0f} s"}
    if res.returncode != 0:
        why = f"killed by signal {-res.returncode} (out of memory?)" if res.returncode < 0 else \
            f"exit code {res.returncode}"
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        return {"error": f"{why}: {tail}" if tail else why}
    return json.loads(res.stdout.strip().splitlines()[-1])


def train_memory(backbone: str, pretrained: str | None, shots: int, configs: dict[str, dict] | None = None, *,
                 classes: int = 24, batch_size: int = 64, steps: int = 2, warmup: int = 1, device: str = "cpu",
                 timeout_s: float = 3600.0, log=print) -> dict:
    """Measure each configuration ({name: {"micro_batch": k | None, "grad_checkpointing": bool}}) in a child."""
    configs = configs if configs is not None else standard_configs()
    results = {}
    for name, conf in configs.items():
        spec = {"backbone": backbone, "pretrained": pretrained, "shots": shots, "classes": classes,
                "batch_size": batch_size, "steps": steps, "warmup": warmup, "device": device,
                "micro_batch": conf.get("micro_batch"), "grad_checkpointing": bool(conf.get("grad_checkpointing"))}
        results[name] = _run_child(spec, timeout_s)
        r = results[name]
        log(f"{name}: " + (r["error"] if "error" in r else
                           f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB (steps add {r['step_rss_bytes'] / 1e9:.2f}"
                           f" GB), estimate {r['estimate_bytes'] / 1e9:.2f} GB, {r['seconds_per_step']:.2f} s/step"))
    return {"what": "DGA training step: peak memory and time per memory configuration",
            "backbone": backbone, "pretrained": pretrained, "shots": shots, "classes": classes,
            "images": classes * shots, "batch": min(batch_size, classes * shots), "steps": steps, "warmup": warmup,
            "configs": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dga.bench.train_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="ViT-B-16", help="open_clip model name [ViT-B-16].")
    parser.add_argument("--pretrained", default="none", help="Weights: a tag, a file, or none (random) [none].")
    parser.add_argument("--shots", type=int, default=1, help="Images per class [1].")
    parser.add_argument("--classes", type=int, default=24, help="Classes; images = classes x shots [24].")
    parser.add_argument("--batch-size", type=int, default=64, help="Batch size (capped at the images) [64].")
    parser.add_argument("--micro-batch", type=int, default=8, help="k of the micro-batch configurations [8].")
    parser.add_argument("--configs", help="Comma-separated subset of plain, checkpointing, micro-batch-K, "
                                          "micro-batch-K+checkpointing [all four].")
    parser.add_argument("--steps", type=int, default=2, help="Timed steps per configuration [2].")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps first [1].")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto [cpu].")
    parser.add_argument("--out", type=Path, help="JSON to write [bench/results/train-memory-<backbone>.json].")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_config(json.loads(args.child))))
        return 0
    from dga.bench.measure import machine

    started = datetime.now(UTC)
    pretrained = None if args.pretrained.lower() in ("none", "random", "") else args.pretrained
    configs = standard_configs(args.micro_batch)
    if args.configs:
        unknown = sorted(set(args.configs.split(",")) - set(configs))
        if unknown:
            parser.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(configs)}")
        configs = {name: configs[name] for name in args.configs.split(",")}
    result = train_memory(args.backbone, pretrained, args.shots, configs,
                          classes=args.classes, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                          device=args.device)
    argv_used = sys.argv[1:] if argv is None else argv
    result = {"command": shlex.join(["python", "-m", "dga.bench.train_memory", *argv_used]),
              "date": started.isoformat(timespec="seconds"), "machine": machine(), **result}
    out = args.out or RESULTS_DIR / f"train-memory-{args.backbone}.json"
    atomic_write(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 1 if any("error" in r for r in result["configs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
