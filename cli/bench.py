"""dga-bench: the papers' eager per-view loop vs the fused graph on each backend; model-only vs end-to-end."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-bench --ckpt run.dga --out bench/results --name cpu-small',
    'dga-bench --ckpt run.dga --package run.deploy --batch-sizes 1,8,64,256 --precisions fp32,fp16',
], 'Writes NAME.json and NAME.md (a markdown table) side by side.')


def bench(
    ckpt: Path = typer.Option(..., "--ckpt", help="Model bundle (the reference loop runs it in torch)."),
    package: Path = typer.Option(None, help="Deployment package [exported to a temporary folder]."),
    out: Path = typer.Option(Path("bench/results"), "--out", "-o", help="Folder for the JSON and markdown."),
    name: str = typer.Option(None, help="File stem [bench-<method>-<device>]."),
    batch_sizes: str = typer.Option("1,8,32,64", help="Comma-separated batch sizes."),
    backends: str = typer.Option("torch,onnxruntime", help="Which fused backends to time."),
    precisions: str = typer.Option("fp32", help="ONNX precisions to time (fp16 is for GPUs)."),
    repeat: int = typer.Option(5, help="Timed calls per configuration and round (median reported)."),
    rounds: int = typer.Option(5, help="Interleaved rounds over all configurations (median over rounds)."),
    min_time: float = typer.Option(1.0, help="Seconds each configuration is timed at least, per round."),
    e2e_images: int = typer.Option(512, help="JPEGs in the end-to-end folder."),
    e2e_batch: int = typer.Option(64, help="Batch size of the end-to-end run."),
    e2e_rounds: int = typer.Option(8, help="Interleaved end-to-end / model-only rounds (median of their ratios)."),
    workers: int = typer.Option(None, help="Decode threads in the end-to-end run."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (torch runs)."),
) -> None:
    """Benchmark a bundle: reference loop, fused torch and ONNX, end-to-end, physical limit."""
    from dga.bench.run import BenchOptions, bench_to_files

    opts = BenchOptions(batch_sizes=[int(b) for b in batch_sizes.split(",")], backends=backends.split(","),
                        precisions=precisions.split(","), repeat=repeat, rounds=rounds, min_time_s=min_time,
                        e2e_images=e2e_images, e2e_batch=e2e_batch, e2e_rounds=e2e_rounds, workers=workers,
                        device=device)
    js, md = bench_to_files(ckpt, opts, out, name, package, log=typer.echo)
    typer.echo(f"wrote {js} and {md}")


app = single_command(bench, bench.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
