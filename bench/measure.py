"""Timing primitives: warm up, repeat, report the median; peak memory; CPU steal; machine description."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable


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
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
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
