"""Predict a folder of images into files: what ``dga-infer`` does, callable from Python.

    from dga.runtime.run_folder import infer_to_files
    run = infer_to_files("photos/", "run.deploy", "preds.csv", resume=True)
    print(run.summary.line(), "all ok" if run.all_ok else f"see {run.errors}")

Every file the listing names as an image candidate gets exactly one line: a row in ``out`` (CSV
or JSON lines) when it decodes, else a line in the errors file (path, reason code, message), never
both. Pillow's warnings about a file go to that file's line. The other files of the walk are
counted as skipped (``FolderRun.skipped`` says which and why; hidden files are not counted). Rows
are flushed batch by batch, so an interrupted run loses at most a batch; ``resume=True`` skips
paths already in either file and appends the rest, so resuming after a kill at any point ends
with the rows of an uninterrupted run, none lost, none twice. A bad file never stops the run
unless ``fail_fast=True``. Nothing here imports torch: it is the runtime's.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dga.errors import ConfigError
from dga.runtime.listing import SkippedFile
from dga.runtime.results import ErrorWriter, ResultWriter, Summary


@dataclass
class FolderRun:
    """What ``infer_to_files`` did."""

    summary: Summary  # this call's counts (files skipped by resume are not in it), speed, backend
    out: Path  # the predictions file
    errors: Path  # the errors file
    precision: str  # what the runner ran: fp32 or fp16
    stopped_early: bool = False  # fail_fast stopped at a bad file
    failed_earlier: int = 0  # files of this listing an earlier (resumed) run already reported as failed
    first_error: tuple[str, str] | None = None  # (path, message) of the first bad file of this call
    skipped: list[SkippedFile] = field(default_factory=list)  # files of the walk that are not images

    @property
    def all_ok(self) -> bool:
        """Every listed file has a prediction: no failure in this call nor in the run it resumed."""
        return not (self.summary.failed or self.failed_earlier)

    def to_json(self) -> dict:
        return {**self.summary.to_json(), "precision": self.precision, "out": str(self.out),
                "errors": str(self.errors), "stopped_early": self.stopped_early}


def output_format(out: Path, fmt: str | None = None) -> str:
    """csv or jsonl: ``fmt`` if given, else from the suffix of ``out`` (.jsonl / .json -> jsonl)."""
    fmt = fmt or ("jsonl" if Path(out).suffix.lower() in (".jsonl", ".json") else "csv")
    if fmt not in ("csv", "jsonl"):
        raise ConfigError(f"--format {fmt!r} must be csv or jsonl")
    return fmt


def infer_to_files(
    inputs: str | Path,
    model,
    out: str | Path = "predictions.csv",
    *,
    errors: str | Path | None = None,
    fmt: str | None = None,
    backend: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    threads: int | None = None,
    topk: int = 5,
    draft: bool = True,
    gpu_decode: bool = False,
    decode_priority: str = "auto",
    resume: bool = False,
    fail_fast: bool = False,
    summary: str | Path | None = None,
    progress: bool | None = None,
) -> FolderRun:
    """Predict every image under ``inputs`` (a folder, searched recursively, or one file) into files.

    ``model`` is a deployment package directory, or a ``Predictor`` (then the backend, precision,
    batch, worker, thread, topk, draft, GPU-decode and priority arguments are the Predictor's own
    and it is left open). ``errors`` defaults to ``errors.jsonl`` next to ``out``; ``summary``, if
    given, receives ``FolderRun.to_json()``; ``progress`` (None: when stderr is a terminal) shows
    a tqdm bar. User errors (bad package, option, output folder) raise ``ConfigError`` before any
    file is written.
    """
    from dga.runtime.listing import scan_inputs
    from dga.runtime.predictor import Predictor

    out = Path(out)
    fmt = output_format(out, fmt)
    if batch_size < 1 or topk < 1:
        raise ConfigError("--batch-size and --topk must be at least 1")
    if not out.resolve().parent.is_dir():
        raise ConfigError(f"cannot write {out}: its folder does not exist; create it or choose another --out")
    errors = Path(errors) if errors else out.with_name("errors.jsonl")
    own = not isinstance(model, Predictor)
    if own:
        if gpu_decode:
            from dga.runtime.gpu_decode import gpu_decode_available

            if not gpu_decode_available():
                raise ConfigError("--gpu-decode needs torch, torchvision and a CUDA GPU; drop it to decode on the CPU")
        predictor = Predictor.from_package(model, backend=backend, precision=precision, topk=topk,
                                           batch_size=batch_size, workers=workers, threads=threads, draft=draft,
                                           gpu_decode="cuda" if gpu_decode else None,
                                           decode_priority=decode_priority)
    else:
        predictor = model
    try:
        listing = scan_inputs(inputs)
        return _run(predictor, [str(p) for p in listing.files], listing.skipped, out, errors, fmt, resume,
                    fail_fast, summary, progress)
    finally:
        if own:
            predictor.close()


def _run(predictor, paths: list[str], skipped: list[SkippedFile], out: Path, errors: Path, fmt: str, resume: bool,
         fail_fast: bool, summary: str | Path | None, progress: bool | None) -> FolderRun:
    writer = ResultWriter(out, fmt=fmt, topk=predictor.topk_k, level_names=predictor.package.level_names(),
                          resume=resume)
    err_writer = ErrorWriter(errors, resume=resume)
    failed_earlier = 0
    if resume:
        failed_before = err_writer.done_paths()
        failed_earlier = sum(1 for p in paths if p in failed_before)
        done = writer.done_paths() | failed_before
        paths = [p for p in paths if p not in done]
    bar = None
    if progress if progress is not None else sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="dga-infer")
    ok = failed = 0
    first_error = None
    stopped = False
    latencies_before = len(predictor.batch_latencies)
    start = time.perf_counter()
    try:
        for result in predictor.iter_results(paths):
            if result.ok:
                writer.write(result.path, [lb for lb, _ in result.topk], [p for _, p in result.topk],
                             result.levels or None, result.warnings)
                ok += 1
            else:
                err_writer.write(result.path, result.error, result.message, result.warnings)
                failed += 1
                first_error = first_error or (result.path, result.message)
                if fail_fast:
                    stopped = True
                    break
            if (ok + failed) % predictor.batch_size == 0:  # rows reach the disk batch by batch
                writer.flush()
                err_writer.flush()
            if bar is not None:
                bar.update(1)
    finally:
        writer.close()
        err_writer.close()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    info = Summary(ok=ok, failed=failed, wall_s=wall, batch_latencies=predictor.batch_latencies[latencies_before:],
                   backend=predictor.runner.name, batch_size=predictor.batch_size, skipped=len(skipped))
    run = FolderRun(info, out, errors, predictor.runner.precision, stopped, failed_earlier, first_error, skipped)
    if summary:
        from dga.fsutil import atomic_write

        atomic_write(summary, json.dumps(run.to_json(), indent=1))
    return run
