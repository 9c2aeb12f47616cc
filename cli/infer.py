"""dga-infer: predict every image under a folder with a deployment package."""

from __future__ import annotations

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
    from dga.runtime.run_folder import infer_to_files

    run = infer_to_files(inputs, model, out, errors=errors, fmt=fmt, backend=backend, precision=precision,
                         batch_size=batch_size, workers=workers, threads=threads, topk=topk, draft=draft,
                         gpu_decode=gpu_decode, decode_priority=decode_priority, resume=resume,
                         fail_fast=fail_fast, summary=summary, progress=progress)
    if run.stopped_early and run.first_error:
        typer.echo(f"error: {run.first_error[0]}: {run.first_error[1]} (--fail-fast)", err=True)
    typer.echo(run.summary.line(), err=True)
    if not run.all_ok:
        raise typer.Exit(EXIT_SOME_FAILED)


app = single_command(infer, infer.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
