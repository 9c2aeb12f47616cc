"""dga-triton: write (or check) a Triton Inference Server model repository for a deployment package."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-triton run.deploy --out triton-repo',
    'dga-triton run.deploy --out triton-repo --kind gpu --precision fp16 --instances 2 --max-queue-delay-us 500',
    'dga-triton run.deploy --out triton-repo --engine --overwrite    # also dga_trt from the engine for this GPU',
    'dga-triton --check triton-repo',
], "Models: dga (python backend: the dga runtime, inputs image_bytes or images), dga_onnx (onnxruntime_onnx), "
   "dga_trt (tensorrt_plan, with --engine). Every config is parsed with Triton's ModelConfig proto (needs "
   "tritonclient, the [serve] extra) and checked against the graph. Exit codes: 0 written (or valid); 2 a usage "
   "error, a damaged package, or an invalid repository (one line naming the file and field).")


def triton(
    path: Path = typer.Argument(..., help="Deployment package written by dga-export (with --check: a repository)."),
    out: Path = typer.Option(None, "--out", help="Repository directory to write (required unless --check)."),
    check: bool = typer.Option(False, "--check", help="Validate the repository PATH instead of writing one."),
    precision: str = typer.Option("fp32", help="Graph for dga_onnx and the dga model: fp32 | fp16."),
    kind: str = typer.Option("cpu", help="instance_group kind of every model: cpu | gpu (dga_trt is always gpu)."),
    instances: int = typer.Option(1, help="Instances of each model (instance_group count)."),
    max_batch: int = typer.Option(None, "--max-batch", help="max_batch_size [the package's batch maximum]."),
    preferred_batch: list[int] = typer.Option([], "--preferred-batch", help="dynamic_batching preferred_batch_size "
                                              "(repeatable) [the package's optimal batch]."),
    max_queue_delay_us: int = typer.Option(2000, "--max-queue-delay-us", help="dynamic_batching "
                                           "max_queue_delay_microseconds: how long a request waits for others."),
    engine: bool = typer.Option(False, "--engine", help="Also write dga_trt from the package's TensorRT engine for "
                                "this host's GPU (needs TensorRT and that engine)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
) -> None:
    """Write a Triton model repository (dga, dga_onnx, optionally dga_trt) from a deployment package, validated."""
    from dga.serve.triton import Options, RepositoryError, check_repository, write_repository

    if check:
        summary = check_repository(path)
    else:
        if out is None:
            raise RepositoryError("--out REPO is required to write a repository (or pass --check to validate one)")
        opts = Options(precision=precision, kind=kind, instances=instances, max_batch=max_batch,
                       preferred_batch=tuple(preferred_batch), max_queue_delay_us=max_queue_delay_us, engine=engine)
        summary = write_repository(path, out, opts, overwrite=overwrite)
    for line in summary.lines():
        typer.echo(line)


app = single_command(triton, triton.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
