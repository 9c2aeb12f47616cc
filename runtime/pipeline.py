"""The input pipeline: decode workers fill batches ahead of the engine (double buffering).

A producer thread walks the paths in chunks of one batch, has a thread pool decode each chunk
(Pillow releases the GIL while decoding and resampling) and queues the finished batch; the
consumer runs the engine on batch n while batches n+1 .. n+prefetch are being decoded.
Order is kept: results come out in input order.

When the model computes on the same CPU cores (``background=True``), the decode threads run at the
lowest scheduling priority (Linux: nice 19, per thread): the model's threads then pre-empt them
the moment they have work, and decode fills the model's idle moments and waits for data instead of
stalling the model's parallel operators. Because the model blocks (sleeps) whenever the next batch
is not ready, decode still gets every core then. On the 2-core VM end-to-end reached 88 %, 91 % and
89 % of model-only throughput against 84 %, 82 % and 83 % at normal priority in the same rounds
(bench/results); the CPU work of decode and model together capped it near 91 % there.

Other normal-priority work on the machine (another dga-infer, a service's threads) would crowd such
threads out: a second benchmark running at the same time took end-to-end from 94 % at normal
priority to 64 % at low. So low priority is given up for the rest of a run as soon as the consumer
has waited for decode longer than half its own time per batch, twice in a row (``Starvation``):
the following chunks go to a second pool of normal-priority threads, and a Predictor keeps that
verdict for its later calls. Until then the chunks queued on the low-priority pool decode slowly.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dga.runtime.decode import DecodeError, decode_image


@dataclass
class DecodedBatch:
    paths: list[str]  # good files, in order, one per row of images
    images: np.ndarray  # uint8 [n, S0, S0, 3]
    failures: list[tuple[str, DecodeError]] = field(default_factory=list)
    order: list[tuple[str, int]] = field(default_factory=list)  # ("ok", row) / ("error", i) in input order
    warnings: dict[str, list[str]] = field(default_factory=dict)  # Pillow's warnings, for the files that had any


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


class Starvation:
    """Whether decode at low priority is starving the consumer, judged batch by batch (sticky).

    ``record(wait_s, busy_s)``: the consumer waited ``wait_s`` for a batch and then spent ``busy_s``
    on the previous one. Two batches in a row with ``wait_s > FRACTION * busy_s`` set ``starved``
    for good: once other work has shown it can take the cores, the run stays at normal priority.
    """

    FRACTION = 0.5
    IN_A_ROW = 2

    def __init__(self) -> None:
        self.streak, self.starved = 0, False

    def record(self, wait_s: float, busy_s: float) -> None:
        self.streak = self.streak + 1 if wait_s > self.FRACTION * busy_s else 0
        self.starved = self.starved or self.streak >= self.IN_A_ROW


def lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19): it runs when cores are otherwise idle.

    Linux only, where the nice value belongs to the thread (``setpriority`` on its native id);
    elsewhere ``setpriority`` would apply to the whole process, so this does nothing.
    """
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # a sandbox that forbids it: decode at normal priority
            pass


def _decode_one(path: str, s0: int, draft: bool) -> tuple[np.ndarray | DecodeError, list[str]]:
    """The pixels (or the DecodeError) and Pillow's warnings about the file."""
    notes: list[str] = []
    try:
        return decode_image(path, s0, draft=draft, record_warnings=notes), notes
    except DecodeError as exc:
        return exc, notes


def decode_chunk(pool: ThreadPoolExecutor, paths: Sequence[str], s0: int, draft: bool,
                 gpu_decoder=None) -> DecodedBatch:
    if gpu_decoder is not None:
        results, notes = gpu_decoder.decode(paths), [[] for _ in paths]
    else:
        decoded = list(pool.map(lambda p: _decode_one(p, s0, draft), paths))
        results, notes = [res for res, _ in decoded], [n for _, n in decoded]
    good, images, failures, order = [], [], [], []
    warned = {path: n for path, n in zip(paths, notes, strict=True) if n}
    for path, res in zip(paths, results, strict=True):
        if isinstance(res, DecodeError):
            order.append(("error", len(failures)))
            failures.append((path, res))
        else:
            order.append(("ok", len(good)))
            good.append(path)
            images.append(res)
    stacked = np.stack(images) if images else np.zeros((0, s0, s0, 3), dtype=np.uint8)
    return DecodedBatch(good, stacked, failures, order, warned)


_DONE = object()


def decoded_batches(paths: Sequence[str | Path], s0: int, batch_size: int, workers: int | None = None,
                    prefetch: int = 2, draft: bool = True, gpu_decoder=None,
                    background: bool = False, starvation: Starvation | None = None) -> Iterator[DecodedBatch]:
    """Yield decoded batches in order, decoding up to ``prefetch`` batches ahead of the consumer.

    ``gpu_decoder`` (a ``gpu_decode.JpegBatchDecoder``) decodes each chunk's JPEGs in one call.
    ``background``: decode threads at the lowest priority until ``Starvation`` says otherwise (see
    the module docstring); the consumer's and the producer's threads keep their own. Pass the same
    ``starvation`` to later calls to carry its verdict over (the Predictor does).
    """
    paths = [str(p) for p in paths]
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    starvation = starvation or Starvation()
    n_workers = workers or default_workers()

    def produce() -> None:
        try:
            with ThreadPoolExecutor(n_workers, "dga-decode-low", initializer=lower_thread_priority) as low, \
                    ThreadPoolExecutor(n_workers, "dga-decode") as normal:  # threads start on first use
                for start in range(0, len(paths), batch_size):
                    if stop.is_set():
                        break
                    pool = low if background and not starvation.starved else normal
                    q.put(decode_chunk(pool, paths[start:start + batch_size], s0, draft, gpu_decoder))
        except BaseException as exc:  # surface producer errors in the consumer
            q.put(exc)
        finally:
            q.put(_DONE)

    thread = threading.Thread(target=produce, name="dga-producer", daemon=True)
    thread.start()
    busy = float("inf")  # the consumer's time on the previous batch (none yet: no verdict on the first)
    try:
        while True:
            t = time.perf_counter()
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            starvation.record(time.perf_counter() - t, busy)  # only waits for a batch count
            t = time.perf_counter()
            yield item
            busy = time.perf_counter() - t
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
