"""One Predictor called from 8 threads at once gives exactly the results of sequential calls."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest
from PIL import Image

THREADS, CALLS = 8, 50
TIMEOUT_S = 300  # the whole threaded run; it takes a few seconds on the tiny package


def _inputs(s0: int) -> list[list[np.ndarray]]:
    """Per thread, per call: a uint8 batch of 1-3 images (distinct in every call)."""
    rng = np.random.default_rng(7)
    return [[rng.integers(0, 256, (1 + (t + k) % 3, s0, s0, 3), dtype=np.uint8) for k in range(CALLS)]
            for t in range(THREADS)]


def _threaded(call, inputs):
    """``call`` over every thread's inputs, the threads released at once; bounded by TIMEOUT_S."""
    start = threading.Barrier(THREADS)

    def worker(batches):
        start.wait(timeout=60)
        return [call(b) for b in batches]

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker, batches) for batches in inputs]
        done, pending = wait(futures, timeout=TIMEOUT_S)
        assert not pending, f"{len(pending)} threads did not finish within {TIMEOUT_S} s"
        return [f.result() for f in futures]


def _assert_same(threaded, sequential):
    for t in range(THREADS):
        for k in range(CALLS):
            a, b = threaded[t][k], sequential[t][k]
            assert a.logits.shape == b.logits.shape
            np.testing.assert_array_equal(a.logits, b.logits, err_msg=f"thread {t} call {k}")
            np.testing.assert_array_equal(a.probs, b.probs, err_msg=f"thread {t} call {k}")


@pytest.fixture(scope="module")
def predictor(tiny_package):
    from dga.runtime.predictor import Predictor

    p = Predictor.from_package(tiny_package, backend="onnxruntime", precision="fp32", batch_size=2)
    yield p
    p.close()


def test_onnxruntime_predictor_under_8_threads(predictor):
    inputs = _inputs(predictor.package.s0)
    sequential = [[predictor.predict(b) for b in batches] for batches in inputs]
    threaded = _threaded(predictor.predict, inputs)
    _assert_same(threaded, sequential)
    assert len(predictor.batch_latencies) >= 2 * THREADS * CALLS  # every call ran (batches of 3: two calls)


class SharedStateRunner:
    """A runner with one set of device buffers, like the TensorRT runner's context: the input is staged,
    the engine runs (releasing the GIL), the output is read back. Calls that overlap corrupt each other."""

    name, precision, on_cpu = "shared-state", "fp32", True

    def __init__(self, classes: int, max_batch: int):
        self.max_batch, self.classes = max_batch, classes
        self.staged: np.ndarray | None = None
        self.busy = 0
        self.overlaps = 0

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.busy += 1
        self.overlaps += self.busy > 1
        self.staged = images  # the shared input buffer
        time.sleep(0.0005)  # the engine: other threads run meanwhile
        x = self.staged.reshape(len(self.staged), -1)[:, : self.classes].astype(np.float32) / 255.0
        self.busy -= 1
        e = np.exp(x - x.max(1, keepdims=True))
        return x, (e / e.sum(1, keepdims=True)).astype(np.float32)

    def close(self) -> None:
        pass


def test_engine_calls_are_serialised(tiny_package):
    """The Predictor's lock keeps a runner with shared state correct; without it results get mixed up."""
    from dga.runtime.package import DeployPackage
    from dga.runtime.predictor import Predictor

    package = DeployPackage.load(tiny_package)
    runner = SharedStateRunner(len(package.classnames), package.max_batch)
    p = Predictor(package, runner, batch_size=2)
    inputs = _inputs(package.s0)
    sequential = [[p.predict(b) for b in batches] for batches in inputs]
    # The runner by hand: row i of the logits is the first C bytes of image i, over 255.
    first = inputs[0][0]
    np.testing.assert_array_equal(sequential[0][0].logits,
                                  first.reshape(len(first), -1)[:, :len(package.classnames)] / np.float32(255))
    threaded = _threaded(p.predict, inputs)
    assert runner.overlaps == 0
    _assert_same(threaded, sequential)


def test_predict_paths_under_8_threads(predictor, tmp_path):
    """Files too: each call decodes in its own pool; results equal the sequential ones."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths.append(str(tmp_path / "bad.png"))
    calls = 5
    work = [[paths[(t + k) % len(paths):] + paths[:(t + k) % len(paths)] for k in range(calls)]
            for t in range(THREADS)]
    sequential = [[predictor.predict_paths(w) for w in batches] for batches in work]
    start = threading.Barrier(THREADS)

    def worker(batches):
        start.wait(timeout=60)
        return [predictor.predict_paths(w) for w in batches]

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker, batches) for batches in work]
        done, pending = wait(futures, timeout=TIMEOUT_S)
        assert not pending
    def facts(results):
        return [(r.path, r.topk, r.levels, r.error, r.message) for r in results]

    for t, f in enumerate(futures):
        assert [facts(rs) for rs in f.result()] == [facts(rs) for rs in sequential[t]]
    bad = [r for r in sequential[0][0] if not r.ok]
    assert [r.path for r in bad] == [str(tmp_path / "bad.png")]
