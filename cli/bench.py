"""dga-bench: the papers' eager per-view loop vs the fused graph on each backend; model-only vs end-to-end."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-bench --ckpt run.dga --out bench/results --name cpu-small',
    'dga-bench --backbone ViT-B-16 --pretrained none --batch-sizes 1,8,32 --budget-s 570 --name cpu-vit-b16',
    'dga-bench --ckpt run.dga --precisions fp32,int8-dynamic,int8-static --budget-s 120',
    'dga-bench --ckpt run.dga --package run.deploy --batch-sizes 1,8,64,256 --precisions fp32,fp16',
    'dga-bench --suite serve --package run.deploy --concurrency 1,16 --requests 160   # needs [serve]',
], 'Writes NAME.json and NAME.md (a markdown table) side by side. Suites: model (the default: the eager '
   'per-view loop against stacked views in torch, the fused module and the fused graph, model-only against '
   'end-to-end; needs --ckpt, or --backbone for an untrained model of real shape) and serve (a real Triton server '
   'over the package: requests/s and latency per concurrency level; needs --package).')


def bench(
    suite: str = typer.Option("model", help="model | serve."),
    ckpt: Path = typer.Option(None, "--ckpt", help="Model bundle (the reference loop runs it in torch; suite model)."),
    backbone: str = typer.Option(None, help="Instead of --ckpt: an untrained DGA model of this open_clip backbone "
                                 "on the embedded benchmark's 24 classes (7 views; no download, no training)."),
    pretrained: str = typer.Option("none", help="With --backbone: weights tag, local file, 'shipped' or 'none'."),
    package: Path = typer.Option(None, help="Deployment package [suite model: exported to a temporary folder]."),
    out: Path = typer.Option(Path("bench/results"), "--out", "-o", help="Folder for the JSON and markdown."),
    name: str = typer.Option(None, help="File stem [bench-<method>-<device>]."),
    batch_sizes: str = typer.Option("1,8,32", help="Comma-separated batch sizes."),
    backends: str = typer.Option("torch,torch-stacked,torch-compile,onnxruntime",
                                 help="What to time besides the eager loop: torch (the fused module), torch-stacked "
                                      "(the model's own forward, views stacked), torch-compile (the same compiled), "
                                      "onnxruntime."),
    precisions: str = typer.Option("fp32", help="ONNX precisions to time: fp32, fp16 (for GPUs), int8 (the "
                                                "package's), int8-dynamic, int8-static (quantized from fp32)."),
    budget_s: float = typer.Option(None, "--budget-s", help="Finish within about this many seconds: fewer rounds, "
                                   "batch sizes and end-to-end images as needed (the plan is recorded)."),
    compile_timeout: float = typer.Option(300.0, help="Seconds torch.compile may take (a quarter of --budget-s at "
                                                      "most); past it the compiled rows are left out, with why."),
    calib_images: int = typer.Option(16, help="Calibration images of int8-static."),
    repeat: int = typer.Option(5, help="Timed calls per configuration and round (median reported)."),
    rounds: int = typer.Option(5, help="Interleaved rounds over all configurations (median over rounds)."),
    min_time: float = typer.Option(1.0, help="Seconds each configuration is timed at least, per round."),
    e2e_images: int = typer.Option(512, help="JPEGs in the end-to-end folder."),
    e2e_batch: int = typer.Option(64, help="Batch size of the end-to-end run."),
    e2e_rounds: int = typer.Option(8, help="Interleaved end-to-end / model-only rounds (median of their ratios)."),
    workers: int = typer.Option(None, help="Decode threads in the end-to-end run."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (torch runs)."),
    concurrency: str = typer.Option("1,16", help="Suite serve: comma-separated numbers of concurrent clients."),
    requests: int = typer.Option(160, help="Suite serve: requests per concurrency level."),
    instances: int = typer.Option(1, help="Suite serve: model instances in the server."),
) -> None:
    """Benchmark a bundle: reference loop, fused torch and ONNX, end-to-end, physical limit (or a served package)."""
    from dga.errors import ConfigError

    if suite == "serve":
        from dga.bench.serve import ServeBenchOptions, serve_bench_to_files

        if package is None:
            raise ConfigError("--suite serve needs --package PKG (a deployment package written by dga-export)")
        try:
            levels = [int(c) for c in concurrency.split(",")]
        except ValueError as exc:
            raise ConfigError(f"--concurrency {concurrency!r} must be comma-separated integers") from exc
        opts = ServeBenchOptions(concurrency=levels, requests=requests, instances=instances)
        js, md = serve_bench_to_files(package, opts, out, name, log=typer.echo)
        typer.echo(f"wrote {js} and {md}")
        return
    if suite != "model":
        raise ConfigError(f"--suite {suite!r} must be model or serve")
    if (ckpt is None) == (backbone is None):
        raise ConfigError("--suite model needs --ckpt BUNDLE (a model bundle written by dga-train) or --backbone NAME "
                          "(an untrained model of that open_clip backbone), not both")
    from dga.bench.measure import process_age_s
    from dga.bench.run import BenchOptions, bench_to_files

    started = time.perf_counter() - (process_age_s() or 0.0)  # the budget counts the start-up and imports too

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--batch-sizes {batch_sizes!r} must be comma-separated integers") from exc
    opts = BenchOptions(batch_sizes=sizes, backends=backends.split(","), precisions=precisions.split(","),
                        repeat=repeat, rounds=rounds, min_time_s=min_time, e2e_images=e2e_images, e2e_batch=e2e_batch,
                        e2e_rounds=e2e_rounds, workers=workers, device=device, budget_s=budget_s,
                        compile_timeout_s=compile_timeout, calib_images=calib_images,
                        command=shlex.join(["dga-bench", *sys.argv[1:]]), started=started)
    weights = None if pretrained.lower() in ("none", "random", "") else pretrained
    js, md = bench_to_files(ckpt, opts, out, name, package, log=typer.echo, backbone=backbone, pretrained=weights)
    typer.echo(f"wrote {js} and {md}")


app = single_command(bench, bench.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
