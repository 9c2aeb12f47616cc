"""The embeddable Predictor: a deployment package + a backend runner + the input pipeline.

    from dga.runtime import Predictor
    p = Predictor.from_package("run.deploy")             # TensorRT > ONNX Runtime GPU > CPU
    p.predict(uint8_array_or_pil_images).labels()        # in-memory
    for r in p.predict_folder("photos/"): print(r.path, r.label, r.prob)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dga.errors import ConfigError, InputError, PackageError
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
    """One file: a prediction, or an error (reason code + message); either may carry warnings."""

    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)  # DGA: group index at each hierarchy level
    error: str | None = None  # reason code, e.g. "truncated"
    message: str = ""
    warnings: list[str] = field(default_factory=list)  # Pillow's warnings about the file, one line each

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
SCALES = {"unit": 255.0, "byte": 1.0}  # float input scale -> factor to [0, 255]


def from_float(a: np.ndarray, scale: str | None) -> np.ndarray:
    if scale is None:
        raise InputError(f"{a.dtype} images need scale='unit' (values in [0, 1]) or scale='byte' (values in "
                         f"[0, 255]); uint8 needs none. The Predictor does not guess how floats are scaled")
    if scale not in SCALES:
        raise InputError(f"scale {scale!r} must be one of {', '.join(SCALES)}")
    top = 255.0 / SCALES[scale]
    if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > top * (1 + 1e-6)):
        raise InputError(f"scale={scale!r} means values in [0, {top:g}], but these images hold "
                         f"[{float(np.nanmin(a)):.4g}, {float(np.nanmax(a)):.4g}]")
    return np.clip(np.rint(a.astype(np.float64) * SCALES[scale]), 0, 255).astype(np.uint8)


def batch_array(a: np.ndarray, s0: int, scale: str | None) -> np.ndarray:
    """A 4-D array as the graph's uint8 [B, S0, S0, 3], or InputError."""
    if a.shape[1:] != (s0, s0, 3):
        raise InputError(f"images of shape {tuple(a.shape)} do not fit this package: expected [B, {s0}, {s0}, 3] "
                         f"(RGB, already resized and cropped); pass a list of images to have them resized and "
                         f"cropped as dga-infer does")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating):
        return from_float(a, scale)
    raise InputError(f"images of dtype {a.dtype} are not accepted: expected uint8 (or float with scale=...)")


def one_image(img, s0: int, scale: str | None, index: int) -> np.ndarray:
    """One image of any kind the Predictor takes -> uint8 [S0, S0, 3] through the eval transform."""
    if isinstance(img, str | Path):
        from dga.runtime.decode import decode_image

        return decode_image(img, s0, draft=False)
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise InputError(f"image {index} has shape {tuple(img.shape)}: expected H x W x 3 (RGB), "
                             f"H x W x 1 or H x W x 4")
        if np.issubdtype(img.dtype, np.floating):
            img = from_float(img, scale)
        elif img.dtype != np.uint8:
            raise InputError(f"image {index} has dtype {img.dtype}: expected uint8 (or float with scale=...)")
        img = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    if not isinstance(img, Image.Image):
        raise InputError(f"image {index} is a {type(img).__name__}: expected a PIL image, a path or an array")
    return eval_image(img, s0)


class Predictor:
    """``decode_priority``: "low" runs the decode threads at the lowest CPU priority (pipeline.py),
    "normal" as any thread, "auto" low when the runner computes on the CPU (decode and model share
    the cores) and normal when it runs on a GPU (decode must then keep the GPU fed).

    Threads: one Predictor may be called from several threads at once. Input preparation and file
    decoding run in the calling threads (each ``iter_results`` call has its own decode pool); the
    engine calls are serialised by one lock per Predictor, since a runner's state is not safe to
    share (the TensorRT runner's execution context, buffers and CUDA graphs). Results are the same
    as sequential calls; for engine calls that overlap, use one Predictor per thread or process.
    """

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
        self.engine_lock = threading.Lock()  # one engine call at a time (class docstring: Threads)

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
    def prepare(self, images: np.ndarray | Image.Image | str | Path | Sequence, scale: str | None = None) -> np.ndarray:
        """The graph's input, uint8 [B, S0, S0, 3], from what a caller has (B >= 0):

        - a uint8 array [B, S0, S0, 3] (already resized and cropped) as it is (made contiguous);
        - a float array of that shape only with ``scale`` saying how it is scaled: "unit" for values
          in [0, 1], "byte" for [0, 255] (rounded to uint8; values outside the range are refused);
        - one image or a list of images (PIL images, paths, HxWx3 uint8 arrays of any size) through
          the eval transform, paths through the one decoder (as dga-infer with --no-draft).

        Anything else (another rank, channel count or size, an image without pixels, an integer or
        bool dtype, float without ``scale``, bytes, a mapping, a number) raises InputError naming what
        was expected and what was given. Never a silent cast. A path that cannot be decoded raises
        its DecodeError (``predict_paths`` gives per-file results instead).
        """
        s0 = self.package.s0
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return batch_array(images, s0, scale)
        if isinstance(images, np.ndarray | Image.Image | str | Path):
            images = [images]
        elif not isinstance(images, Sequence | Iterator) or isinstance(images, bytes | bytearray):
            hint = ": decode encoded bytes with dga.runtime.decode.decode_bytes" if isinstance(
                images, bytes | bytearray) else ""
            raise InputError(f"images of type {type(images).__name__} are not accepted: expected an array, a PIL "
                             f"image, a path or a list of them{hint}")
        out = []
        for i, img in enumerate(images):
            size = img.size if isinstance(img, Image.Image) else \
                img.shape[1::-1] if isinstance(img, np.ndarray) and img.ndim == 3 else (1, 1)
            if 0 in size:  # the eval transform scales by the shorter side: an empty image has none
                raise InputError(f"image {i} is {size[0]} x {size[1]} pixels: an image needs at least one pixel")
            out.append(one_image(img, s0, scale, i))
        return np.stack(out) if out else np.zeros((0, s0, s0, 3), np.uint8)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Engine call(s) over a prepared uint8 batch [B, S0, S0, 3], split at the batch size and never
        above the runner's maximum (its batch profile); an empty batch gives empty outputs without
        calling the engine. Safe to call from several threads (one engine call at a time)."""
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise InputError(f"run() takes a prepared uint8 array [B, {self.package.s0}, {self.package.s0}, 3], "
                             f"not {getattr(batch, 'shape', type(batch).__name__)}: use predict() or prepare()")
        batch = batch_array(batch, self.package.s0, None)
        c = len(self.classnames)
        if not len(batch):
            return np.zeros((0, c), np.float32), np.zeros((0, c), np.float32)
        step = max(1, min(self.batch_size, self.runner.max_batch))
        logits, probs = [], []
        for i in range(0, len(batch), step):
            part = batch[i:i + step]
            with self.engine_lock:
                t = time.perf_counter()
                lo, pr = self.runner.infer(part)
                self.batch_latencies.append(time.perf_counter() - t)
            if lo.shape != (len(part), c) or pr.shape != (len(part), c):
                raise PackageError(f"{self.runner.name} returned outputs of shape {list(lo.shape)} for {len(part)} "
                                   f"images of a package with {c} classes: the engine does not belong to it")
            logits.append(lo)
            probs.append(pr)
        return np.concatenate(logits), np.concatenate(probs)

    def predict(self, images, scale: str | None = None) -> Predictions:
        """Logits and probs [B, C] for ``images`` (see ``prepare`` for what is accepted)."""
        logits, probs = self.run(self.prepare(images, scale))
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
                    yield Result(path, error=err.reason, message=str(err), warnings=batch.warnings.get(path, []))
                else:
                    row, path = top[i], batch.paths[i]
                    yield Result(path, [(names[j], float(probs[i, j])) for j in row],
                                 self.package.levels_of(int(row[0])), warnings=batch.warnings.get(path, []))

    def predict_paths(self, paths: Iterable[str | Path]) -> list[Result]:
        return list(self.iter_results(paths))

    def predict_folder(self, folder: str | Path) -> Iterator[Result]:
        return self.iter_results(list_inputs(folder))

    def close(self) -> None:
        self.runner.close()
