"""dga-infer: predict every image under a folder with a deployment package."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EXIT_SOME_FAILED = 3  # every good file has its row; some files are listed in errors.jsonl

EPILOG = epilog([
    'dga-infer photos/ --model run.deploy --out preds.csv',
    'dga-infer photos/ --model run.deploy --backend onnxruntime --batch-size 32 --out preds.jsonl --topk 3',
    'dga-infer photos/ --model run.deploy --out preds.csv --resume      # continue an interrupted run',
], f"Exit codes: 0 every file predicted; {EXIT_SOME_FAILED} some files could not be read (see the errors "
   f"file: path, reason, message); 2 a usage error (bad model, bad option); --fail-fast stops at the first "
   f"bad file (exit {EXIT_SOME_FAILED}).")


def infer(
    inputs: Path = typer.Argument(..., help="A folder (searched recursively) or one image file."),
    model: Path = typer.Option(..., "--model", "-m", help="Deployment package written by dga-export."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="Predictions file (.csv or .jsonl)."),
    errors: Path = typer.Option(None, help="Errors file (JSON lines) [next to --out: errors.jsonl]."),
    fmt: str = typer.Option(None, "--format", help="csv | jsonl [from the --out suffix]."),
    backend: str = typer.Option("auto", help="auto | tensorrt | onnxruntime | torch."),
    precision: str = typer.Option("auto", help="auto | fp32 | fp16 (auto: fp16 on a GPU, fp32 on the CPU)."),
    batch_size: int = typer.Option(64, help="Images per engine call."),
    workers: int = typer.Option(None, help="Decode threads [CPU count, at most 8]."),
    threads: int = typer.Option(None, help="ONNX Runtime intra-op threads [all cores]."),
    topk: int = typer.Option(5, help="Labels and probabilities per row."),
    draft: bool = typer.Option(True, "--draft/--no-draft", help="JPEG DCT down-scaling while decoding (faster; "
                                                                "--no-draft decodes exactly as training)."),
    gpu_decode: bool = typer.Option(False, "--gpu-decode",
                                    help="Decode JPEGs on the GPU (nvJPEG via torchvision; needs CUDA; pixels "
                                         "differ slightly from the CPU path)."),
    decode_priority: str = typer.Option("auto", help="auto | low | normal: low runs the decode threads at the "
                                        "lowest CPU priority so that a model on the same cores never waits for "
                                        "them (auto: low on a CPU backend, normal on a GPU)."),
    resume: bool = typer.Option(False, help="Skip paths already in --out / the errors file; append the rest."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first file that cannot be read."),
    summary: Path = typer.Option(None, help="Also write the run summary as JSON here."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar [on a terminal]."),
) -> None:
    """Predict every image under INPUTS; write one row per good file and one error per bad file."""
    from dga.errors import ConfigError
    from dga.runtime.listing import list_inputs
    from dga.runtime.predictor import Predictor
    from dga.runtime.results import ErrorWriter, ResultWriter, Summary

    fmt = fmt or ("jsonl" if out.suffix.lower() in (".jsonl", ".json") else "csv")
    if fmt not in ("csv", "jsonl"):
        raise ConfigError(f"--format {fmt!r} must be csv or jsonl")
    if batch_size < 1 or topk < 1:
        raise ConfigError("--batch-size and --topk must be at least 1")
    if not out.resolve().parent.is_dir():
        raise ConfigError(f"cannot write {out}: its folder does not exist; create it or choose another --out")
    errors = errors or out.with_name("errors.jsonl")
    if gpu_decode:
        from dga.runtime.gpu_decode import gpu_decode_available

        if not gpu_decode_available():
            raise ConfigError("--gpu-decode needs torch, torchvision and a CUDA GPU; drop it to decode on the CPU")
    predictor = Predictor.from_package(model, backend=backend, precision=precision, topk=topk,
                                       batch_size=batch_size, workers=workers, threads=threads, draft=draft,
                                       gpu_decode="cuda" if gpu_decode else None, decode_priority=decode_priority)
    paths = [str(p) for p in list_inputs(inputs)]
    levels = predictor.package.level_names()
    writer = ResultWriter(out, fmt=fmt, topk=predictor.topk_k, level_names=levels, resume=resume)
    err_writer = ErrorWriter(errors, resume=resume)
    failed_earlier = 0  # files of this listing that a resumed run's earlier part already reported as failed
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
    start = time.perf_counter()
    stopped = False
    try:
        for result in predictor.iter_results(paths):
            if result.ok:
                writer.write(result.path, [lb for lb, _ in result.topk], [p for _, p in result.topk],
                             result.levels or None)
                ok += 1
            else:
                err_writer.write(result.path, result.error, result.message)
                failed += 1
                if fail_fast:
                    stopped = True
                    typer.echo(f"error: {result.path}: {result.message} (--fail-fast)", err=True)
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
    info = Summary(ok=ok, failed=failed, wall_s=wall, batch_latencies=predictor.batch_latencies,
                   backend=predictor.runner.name, batch_size=predictor.batch_size)
    typer.echo(info.line(), err=True)
    if summary:
        import json

        from dga.fsutil import atomic_write

        atomic_write(summary, json.dumps({**info.to_json(), "precision": predictor.runner.precision,
                                   "out": str(out), "errors": str(errors), "stopped_early": stopped}, indent=1))
    predictor.close()
    if failed or failed_earlier:
        raise typer.Exit(EXIT_SOME_FAILED)


app = single_command(infer, infer.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
