"""Timing primitives: warm up, repeat, report the median; spread over rounds; a run plan that fits a time
budget; peak memory; CPU steal; machine description."""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


def time_call(fn: Callable[[], object], warmup: int = 2, repeat: int = 5, min_time_s: float = 0.0,
              sync: Callable[[], None] | None = None) -> dict:
    """Median seconds per call (and p90) after ``warmup`` calls; at least ``repeat`` timed calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_s": statistics.median(times), "p90_s": times[int(0.9 * (len(times) - 1))], "calls": len(times)}


def spread(values: list[float]) -> dict:
    """Median, min, max and the interquartile range (Python's "inclusive" quartiles) of a few rounds."""
    vals = sorted(float(v) for v in values)
    q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else (vals[0],) * 3
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "q1": q1, "q3": q3}


def process_age_s(stat_path: str = "/proc/self/stat", uptime_path: str = "/proc/uptime") -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): a command's start-up, imports
    included, counts against its time budget."""
    try:
        with open(stat_path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
        with open(uptime_path) as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def wall_and_cpu(fn: Callable[[], object]) -> tuple[object, float, float]:
    """One call: (fn(), wall seconds, CPU seconds of the whole process: every thread, the model's too)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def cpu_jiffies(stat_path: str = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) CPU time of all cores since boot from Linux's /proc/stat; None where it is absent.

    Steal is time the hypervisor ran someone else while this VM had work: a run it is high in was
    measured on a machine that was not all there.
    """
    try:
        with open(stat_path) as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return steal, user + nice + system + idle + iowait + irq + softirq + steal


class StealMeter:
    """Fraction of CPU time stolen by the hypervisor between ``start()`` and ``stop()`` (None: unknown)."""

    def __init__(self, read=cpu_jiffies):
        self.read, self.begin = read, None

    def start(self) -> StealMeter:
        self.begin = self.read()
        return self

    def stop(self) -> float | None:
        end = self.read()
        if self.begin is None or end is None or end[1] <= self.begin[1]:
            return None
        return (end[0] - self.begin[0]) / (end[1] - self.begin[1])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    from dga.runtime.backends.onnxruntime import cpu_model, usable_cpus

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    try:
        import tensorrt as trt  # noqa: F401

        info["tensorrt"] = trt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


# -- a plan that fits a time budget -------------------------------------------------------------------

CHEAP_CALL_S = 1.0  # calls shorter than this get a warm-up call in every round (caches the others flushed)
WARMUP_BELOW_S = 5.0  # a new batch size's first call is a warm-up only below this: a longer call amortises
# its first-call allocations (a few % of it), and a real-size model cannot afford a whole extra round
# A call on more images can cost more per image where its activations outgrow the caches (a ViT-B/16-size
# model in torch on a 2-core CPU: 1.5x at 8 images); the plan assumes this much more than at batch 1.
BATCH_COST_MARGIN = 1.25
DECODE_S_PER_IMAGE = 0.01  # decoding one 320-1280 px JPEG on one core, for the end-to-end estimate
E2E_PASSES = 3  # model-only, end-to-end (auto priority), end-to-end (normal priority); decode alone ~ one more


@dataclass
class RunPlan:
    """What the table and the end-to-end rounds run: the requested settings, or fewer where a budget asks."""

    batch_sizes: list[int]
    rounds: int
    repeat: int
    min_time_s: float
    e2e_images: int
    e2e_batch: int
    e2e_rounds: int
    available_s: float | None = None  # seconds left for the table and end-to-end when planned (None: no budget)
    estimated_s: float = 0.0  # what they are predicted to take
    gave_up: list[str] = field(default_factory=list)  # what was reduced to fit, in order
    fits: bool = True

    def to_json(self) -> dict:
        return asdict(self)


def table_seconds(call_s: dict[str, float], plan: RunPlan) -> float:
    """Predicted seconds of the interleaved rounds: ``call_s`` is each configuration's seconds per image
    (from one call at batch 1), a call on b > 1 images costs b times that times ``BATCH_COST_MARGIN``."""
    total = 0.0
    for per_image in call_s.values():
        for b in plan.batch_sizes:
            call = per_image * b * (BATCH_COST_MARGIN if b > 1 else 1.0)
            total += call if 1 < b and call < WARMUP_BELOW_S else 0.0  # the first round's warm-up (batch 1: estimated)
            total += plan.rounds * max(plan.repeat * call, plan.min_time_s)
            total += (plan.rounds - 1) * call if call < CHEAP_CALL_S else 0.0
    return total


def e2e_seconds(model_s_per_image: float, plan: RunPlan) -> float:
    """Predicted seconds of the end-to-end rounds (the Predictor's warm-up batch included)."""
    per_image = model_s_per_image + DECODE_S_PER_IMAGE
    return (e2e_warmup_images(model_s_per_image, plan.e2e_batch) * per_image
            + plan.e2e_rounds * plan.e2e_images * E2E_PASSES * per_image)


def e2e_warmup_images(model_s_per_image: float, e2e_batch: int) -> int:
    """Images the Predictor warms up on before the end-to-end rounds: a whole batch where that is cheap
    (decode threads started, the runner at this batch size), one image where it is not (the table
    has warmed the runner already)."""
    return e2e_batch if model_s_per_image * e2e_batch < WARMUP_BELOW_S else 1


def plan_run(call_s: dict[str, float], e2e_s_per_image: float, plan: RunPlan, available_s: float | None) -> RunPlan:
    """``plan`` (the requested settings) reduced step by step until its predicted time fits ``available_s``.

    The steps, in order, each taken only while the plan does not fit: the minimum time per
    configuration to 0.2 s; the end-to-end folder halved down to two of its batches; its rounds
    to 3; the timed calls per round halved down to 1; the table's rounds to 3; the largest batch
    size dropped while more than two remain; the end-to-end batch to the largest batch left in
    the table; end-to-end rounds to 1; table rounds to 2; the end-to-end folder to one batch;
    one round; batch sizes down to the smallest. What cannot fit is run at the last step and
    marked ``fits: false``.
    """
    p = RunPlan(**{**plan.to_json(), "gave_up": []})
    if available_s is None:
        p.estimated_s = table_seconds(call_s, p) + e2e_seconds(e2e_s_per_image, p)
        return p
    p.available_s = available_s

    def cost() -> float:
        return table_seconds(call_s, p) + e2e_seconds(e2e_s_per_image, p)

    def steps():
        if p.min_time_s > 0.2:
            yield "min-time 0.2 s", lambda: setattr(p, "min_time_s", 0.2)
        while p.e2e_images > 2 * p.e2e_batch:
            yield "end-to-end images halved", lambda: setattr(p, "e2e_images", max(2 * p.e2e_batch, p.e2e_images // 2))
        if p.e2e_rounds > 3:
            yield "end-to-end rounds 3", lambda: setattr(p, "e2e_rounds", 3)
        while p.repeat > 1:
            yield "timed calls per round halved", lambda: setattr(p, "repeat", max(1, p.repeat // 2))
        if p.rounds > 3:
            yield "rounds 3", lambda: setattr(p, "rounds", 3)
        while len(p.batch_sizes) > 2:
            yield f"batch {p.batch_sizes[-1]} dropped", lambda: p.batch_sizes.pop()
        if p.e2e_batch > p.batch_sizes[-1]:
            def smaller_e2e_batch():
                p.e2e_images = max(2, math.ceil(p.e2e_images * p.batch_sizes[-1] / p.e2e_batch))
                p.e2e_batch = p.batch_sizes[-1]
            yield "end-to-end batch as the largest table batch", smaller_e2e_batch
        if p.e2e_rounds > 1:
            yield "end-to-end rounds 1", lambda: setattr(p, "e2e_rounds", 1)
        if p.rounds > 2:
            yield "rounds 2", lambda: setattr(p, "rounds", 2)
        if p.e2e_images > p.e2e_batch:
            yield "end-to-end images one batch", lambda: setattr(p, "e2e_images", p.e2e_batch)
        if p.rounds > 1:
            yield "rounds 1", lambda: setattr(p, "rounds", 1)
        while len(p.batch_sizes) > 1:
            yield f"batch {p.batch_sizes[-1]} dropped", lambda: p.batch_sizes.pop()

    for name, apply in steps():
        if cost() <= available_s:
            break
        apply()
        if p.gave_up and p.gave_up[-1].split(" (")[0] == name:  # "rounds halved (x2)", not the same line twice
            times = int(p.gave_up[-1].split("(x")[1].rstrip(")")) if "(x" in p.gave_up[-1] else 1
            p.gave_up[-1] = f"{name} (x{times + 1})"
        else:
            p.gave_up.append(name)
    p.estimated_s = cost()
    p.fits = p.estimated_s <= available_s
    return p
