"""dga-infer: predict every image under a folder with a deployment package."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import DEBUG_ENV, epilog, run_app, single_command

EXIT_SOME_FAILED = 3  # every good file has its row; some files are listed in errors.jsonl

EPILOG = epilog([
    'dga-infer photos/ --model run.deploy --out preds.csv',
    'dga-infer photos/ --model run.deploy --backend onnxruntime --batch-size 32 --out preds.jsonl --topk 3',
    'dga-infer photos/ --model run.deploy --out preds.csv --resume      # continue an interrupted run',
    'dga-infer photos/ --model run.deploy --executor ray --out preds/   # Ray Data on a local Ray, Parquet parts',
    'dga-infer /shared/photos --model /shared/run.deploy --executor ray --ray-address auto '
    '--ray-actors 16 --out /shared/preds',
], f"Exit codes: 0 every file predicted; {EXIT_SOME_FAILED} some files could not be read (see the errors "
   f"file: path, reason, message; with --executor ray the rows whose error column is set); 2 a usage error "
   f"(bad model, bad option, a missing [ray] extra); 1 an internal error (a bug: please report it; "
   f"{DEBUG_ENV}=1 shows the traceback); --fail-fast stops at the first bad file (exit {EXIT_SOME_FAILED}). "
   f"Files of the folder that are not images are skipped and counted in the summary line (--list-skipped "
   f"names them); hidden files are skipped without a count.")

EXECUTORS = ("local", "ray")
LOCAL_ONLY = ("--errors", "--format", "--workers", "--gpu-decode", "--decode-priority", "--fail-fast")
RAY_ONLY = ("--ray-address", "--ray-actors", "--ray-cpus-per-actor", "--ray-gpus-per-actor")


def infer(
    inputs: Path = typer.Argument(..., help="A folder (searched recursively) or one image file."),
    model: Path = typer.Option(..., "--model", "-m", help="Deployment package written by dga-export."),
    out: Path = typer.Option(None, "--out", "-o", help="Predictions file (.csv or .jsonl) [predictions.csv]; with "
                             "--executor ray a folder of Parquet parts (required)."),
    errors: Path = typer.Option(None, help="Errors file (JSON lines) [next to --out: errors.jsonl]."),
    fmt: str = typer.Option(None, "--format", help="csv | jsonl [from the --out suffix]."),
    backend: str = typer.Option("auto", help="auto | tensorrt | onnxruntime | torch | torch-cuda (torch-cuda: the "
                                "bundle's torch module in fp16 with CUDA graphs, on a CUDA GPU, no TensorRT)."),
    precision: str = typer.Option("auto", help="auto | fp32 | fp16 | int8 (auto: fp16 on a GPU, fp32 on the CPU, "
                                  "never int8; int8: a package exported with --int8, for CPUs)."),
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
    resume: bool = typer.Option(False, help="Skip paths already in --out / the errors file (with --executor "
                                "ray: in its Parquet parts); append the rest."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first file that cannot be read."),
    summary: Path = typer.Option(None, help="Also write the run summary as JSON here."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar [on a terminal]."),
    list_skipped: bool = typer.Option(False, "--list-skipped", help="Print each file of the folder that was "
                                      "skipped as not an image, with why, on stderr (skipped: PATH (WHY)) before "
                                      "the summary line."),
    executor: str = typer.Option("local", help="local | ray: ray runs Ray Data (read, an actor pool of "
                                 "predictors, Parquet parts in --out; needs the [ray] extra)."),
    ray_address: str = typer.Option(None, help="An existing Ray cluster to run on (ray.init address, e.g. "
                                    "auto on a node of the cluster, or head:6379) [a local Ray on all local CPUs]."),
    ray_actors: int = typer.Option(None, help="Predictor actors in the pool [as many as fit, leaving 1 CPU "
                                   "for reading files]."),
    ray_cpus_per_actor: float = typer.Option(None, help="CPUs each actor reserves (and ONNX Runtime threads "
                                             "unless --threads) [1]."),
    ray_gpus_per_actor: float = typer.Option(None, help="GPUs each actor reserves (e.g. 1, or 0.5 to share) [0]."),
) -> None:
    """Predict every image under INPUTS; write one row per good file and one error per bad file."""
    from dga.errors import ConfigError

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} must be one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        given = dict(zip(LOCAL_ONLY, (errors, fmt, workers, gpu_decode or None,
                                      None if decode_priority == "auto" else decode_priority, fail_fast or None),
                         strict=True))
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise ConfigError(f"not used by --executor ray: {', '.join(extra)} (errors are rows of the Parquet "
                              "parts, decoding runs in the actors)")
        if out is None:
            raise ConfigError("--executor ray needs --out DIR, the folder its Parquet parts go to")
        from dga.runtime.ray_data import infer_to_parquet, use_own_token

        if not ray_address:
            use_own_token()  # the local Ray lives and dies with this command
        ray_run = infer_to_parquet(inputs, model, out, backend=backend, precision=precision, batch_size=batch_size,
                                   threads=threads, topk=topk, draft=draft, resume=resume, address=ray_address,
                                   actors=ray_actors, cpus_per_actor=ray_cpus_per_actor,
                                   gpus_per_actor=ray_gpus_per_actor, progress=progress, summary=summary,
                                   log=lambda line: typer.echo(line, err=True))
        _print_skipped(ray_run.skipped_files if list_skipped else [])
        typer.echo(ray_run.line(), err=True)
        if not ray_run.all_ok:
            raise typer.Exit(EXIT_SOME_FAILED)
        return
    given = dict(zip(RAY_ONLY, (ray_address, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor), strict=True))
    extra = [name for name, value in given.items() if value is not None]
    if extra:
        raise ConfigError(f"only used by --executor ray: {', '.join(extra)}")
    from dga.runtime.run_folder import infer_to_files

    run = infer_to_files(inputs, model, out or Path("predictions.csv"), errors=errors, fmt=fmt, backend=backend,
                         precision=precision, batch_size=batch_size, workers=workers, threads=threads, topk=topk,
                         draft=draft, gpu_decode=gpu_decode, decode_priority=decode_priority, resume=resume,
                         fail_fast=fail_fast, summary=summary, progress=progress)
    if run.stopped_early and run.first_error:
        typer.echo(f"error: {run.first_error[0]}: {run.first_error[1]} (--fail-fast)", err=True)
    _print_skipped(run.skipped if list_skipped else [])
    typer.echo(run.summary.line(), err=True)
    if not run.all_ok:
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_skipped(skipped) -> None:
    for item in skipped:
        typer.echo(item.line(), err=True)


app = single_command(infer, infer.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
