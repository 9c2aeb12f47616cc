"""The embeddable Predictor: a deployment package + a backend runner + the input pipeline.

    from dga.runtime import Predictor
    p = Predictor.from_package("run.deploy")             # TensorRT > ONNX Runtime GPU > CPU
    p.predict(uint8_array_or_pil_images).labels()        # in-memory
    for r in p.predict_folder("photos/"): print(r.path, r.label, r.prob)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dga.errors import ConfigError
from dga.runtime.backends import Runner, open_runner
from dga.runtime.listing import list_inputs
from dga.runtime.package import DeployPackage
from dga.runtime.pipeline import Starvation, decoded_batches
from dga.runtime.preprocess import eval_image


@dataclass
class Predictions:
    """Outputs for a batch of in-memory images."""

    logits: np.ndarray  # [B, C] float32
    probs: np.ndarray  # [B, C] float32
    classnames: list[str]

    def topk(self, k: int = 5) -> list[list[tuple[str, float]]]:
        idx = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(self.classnames[j], float(self.probs[i, j])) for j in row] for i, row in enumerate(idx)]

    def labels(self) -> list[str]:
        return [self.classnames[j] for j in self.probs.argmax(1)]


@dataclass
class Result:
    """One file: a prediction, or an error (reason code + message)."""

    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)  # DGA: group index at each hierarchy level
    error: str | None = None  # reason code, e.g. "truncated"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.topk[0][0] if self.topk else None

    @property
    def prob(self) -> float | None:
        return self.topk[0][1] if self.topk else None


DECODE_PRIORITIES = ("auto", "low", "normal")


class Predictor:
    """``decode_priority``: "low" runs the decode threads at the lowest CPU priority (pipeline.py),
    "normal" as any thread, "auto" low when the runner computes on the CPU (decode and model share
    the cores) and normal when it runs on a GPU (decode must then keep the GPU fed)."""

    def __init__(self, package: DeployPackage, runner: Runner, topk: int = 5, batch_size: int = 64,
                 workers: int | None = None, draft: bool = True, gpu_decode: str | None = None,
                 decode_priority: str = "auto"):
        if decode_priority not in DECODE_PRIORITIES:
            raise ConfigError(f"decode priority {decode_priority!r} must be one of {', '.join(DECODE_PRIORITIES)}")
        self.background_decode = decode_priority == "low" or (decode_priority == "auto"
                                                              and getattr(runner, "on_cpu", False))
        self.starvation = Starvation()  # once low-priority decode has starved the model, it stays normal
        self.package, self.runner = package, runner
        self.gpu_decoder = None
        if gpu_decode:  # a device name ("cuda", "cuda:1"; "cpu" runs the same code for tests)
            from dga.runtime.gpu_decode import JpegBatchDecoder

            self.gpu_decoder = JpegBatchDecoder(package.s0, gpu_decode, draft)
        self.topk_k = min(topk, len(package.classnames))
        self.batch_size = max(1, min(batch_size, runner.max_batch))
        self.workers, self.draft = workers, draft
        self.batch_latencies: list[float] = []  # seconds per engine call, for summaries

    @classmethod
    def from_package(cls, path: str | Path, backend: str = "auto", precision: str = "auto", device: int = 0,
                     topk: int = 5, batch_size: int = 64, workers: int | None = None, threads: int | None = None,
                     draft: bool = True, gpu_decode: str | None = None, decode_priority: str = "auto") -> Predictor:
        package = DeployPackage.load(path)
        runner = open_runner(package, backend, precision, device, threads=threads)
        return cls(package, runner, topk, batch_size, workers, draft, gpu_decode, decode_priority)

    @property
    def classnames(self) -> list[str]:
        return self.package.classnames

    # -- in memory -----------------------------------------------------------------------------
    def prepare(self, images: np.ndarray | Image.Image | Sequence) -> np.ndarray:
        """uint8 [B, S0, S0, 3] as is; any other images (PIL, HxWx3 arrays) through the eval transform."""
        s0 = self.package.s0
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (s0, s0, 3):
            return images
        if isinstance(images, np.ndarray | Image.Image):
            images = [images]
        out = []
        for img in images:
            if isinstance(img, np.ndarray):
                img = Image.fromarray(img)
            out.append(eval_image(img, s0))
        return np.stack(out)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Engine call(s) over a prepared batch, split at the runner's batch size."""
        logits, probs = [], []
        for i in range(0, len(batch), self.batch_size):
            t = time.perf_counter()
            lo, pr = self.runner.infer(batch[i:i + self.batch_size])
            self.batch_latencies.append(time.perf_counter() - t)
            logits.append(lo)
            probs.append(pr)
        return np.concatenate(logits), np.concatenate(probs)

    def predict(self, images) -> Predictions:
        logits, probs = self.run(self.prepare(images))
        return Predictions(logits, probs, self.classnames)

    # -- files ---------------------------------------------------------------------------------
    def iter_results(self, paths: Iterable[str | Path]) -> Iterator[Result]:
        """Decode (in parallel, ahead of the engine) and predict; one Result per path, in order."""
        names = self.classnames
        for batch in decoded_batches(list(paths), self.package.s0, self.batch_size, self.workers, draft=self.draft,
                                     gpu_decoder=self.gpu_decoder, background=self.background_decode,
                                     starvation=self.starvation):
            probs = self.run(batch.images)[1] if len(batch.paths) else np.zeros((0, len(names)))
            top = np.argsort(-probs, axis=1, kind="stable")[:, :self.topk_k]
            for kind, i in batch.order:
                if kind == "error":
                    path, err = batch.failures[i]
                    yield Result(path, error=err.reason, message=str(err))
                else:
                    row = top[i]
                    yield Result(batch.paths[i], [(names[j], float(probs[i, j])) for j in row],
                                 self.package.levels_of(int(row[0])))

    def predict_paths(self, paths: Iterable[str | Path]) -> list[Result]:
        return list(self.iter_results(paths))

    def predict_folder(self, folder: str | Path) -> Iterator[Result]:
        return self.iter_results(list_inputs(folder))

    def close(self) -> None:
        self.runner.close()
