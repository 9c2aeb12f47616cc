"""The input pipeline: decode workers fill batches ahead of the engine (double buffering).

A producer thread walks the paths in chunks of one batch, has a thread pool decode each chunk
(Pillow releases the GIL while decoding and resampling) and queues the finished batch; the
consumer runs the engine on batch n while batches n+1 .. n+prefetch are being decoded.
Order is kept: results come out in input order.

When the model computes on the same CPU cores (``background=True``), the decode threads run at the
lowest scheduling priority (Linux: nice 19, per thread): the model's threads then pre-empt them
the moment they have work, and decode fills the model's idle moments and waits for data instead of
stalling the model's parallel operators. Because the model blocks (sleeps) whenever the next batch
is not ready, decode still gets every core then: nothing starves. On the 2-core VM this raised
end-to-end from 82 % to 91 % of model-only throughput, the same interleaved rounds (bench/results).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
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


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


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


def _decode_one(path: str, s0: int, draft: bool) -> np.ndarray | DecodeError:
    try:
        return decode_image(path, s0, draft=draft)
    except DecodeError as exc:
        return exc


def decode_chunk(pool: ThreadPoolExecutor, paths: Sequence[str], s0: int, draft: bool,
                 gpu_decoder=None) -> DecodedBatch:
    if gpu_decoder is not None:
        results = gpu_decoder.decode(paths)
    else:
        results = list(pool.map(lambda p: _decode_one(p, s0, draft), paths))
    good, images, failures, order = [], [], [], []
    for path, res in zip(paths, results, strict=True):
        if isinstance(res, DecodeError):
            order.append(("error", len(failures)))
            failures.append((path, res))
        else:
            order.append(("ok", len(good)))
            good.append(path)
            images.append(res)
    stacked = np.stack(images) if images else np.zeros((0, s0, s0, 3), dtype=np.uint8)
    return DecodedBatch(good, stacked, failures, order)


_DONE = object()


def decoded_batches(paths: Sequence[str | Path], s0: int, batch_size: int, workers: int | None = None,
                    prefetch: int = 2, draft: bool = True, gpu_decoder=None,
                    background: bool = False) -> Iterator[DecodedBatch]:
    """Yield decoded batches in order, decoding up to ``prefetch`` batches ahead of the consumer.

    ``gpu_decoder`` (a ``gpu_decode.JpegBatchDecoder``) decodes each chunk's JPEGs in one call.
    ``background``: decode threads at the lowest priority (see the module docstring); the
    consumer's thread is left as it is.
    """
    paths = [str(p) for p in paths]
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def produce() -> None:
        if background:
            lower_thread_priority()
        try:
            with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="dga-decode",
                                    initializer=lower_thread_priority if background else None) as pool:
                for start in range(0, len(paths), batch_size):
                    if stop.is_set():
                        break
                    q.put(decode_chunk(pool, paths[start:start + batch_size], s0, draft, gpu_decoder))
        except BaseException as exc:  # surface producer errors in the consumer
            q.put(exc)
        finally:
            q.put(_DONE)

    thread = threading.Thread(target=produce, name="dga-producer", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
