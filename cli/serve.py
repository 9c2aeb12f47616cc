"""dga-serve: serve a deployment package with the Triton Inference Server bundled in nvidia-pytriton."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-serve run.deploy',
    'dga-serve run.deploy --http-port 8000 --grpc-port 8001 --metrics-port 8002 --instances 2',
    'dga-serve run.deploy --host 0.0.0.0 --max-queue-delay-us 500 --preferred-batch 8',
], "Needs the [serve] extra (nvidia-pytriton, which pulls numpy<2: give it an environment of its own). Serves "
   "the python-backend model dga (the bundled server has no onnxruntime backend; for dga_onnx and dga_trt use "
   "dga-triton and an official Triton image). Ports default to free ones, printed at start with the endpoints. "
   "SIGTERM or SIGINT stops the server and removes its temporary repository. Exit codes: 0 stopped cleanly; 2 a "
   "usage error, a missing extra, or a server that did not become ready; otherwise the server's exit status.")


def serve(
    package: Path = typer.Argument(..., help="Deployment package written by dga-export."),
    host: str = typer.Option("127.0.0.1", help="Address the HTTP, gRPC and metrics endpoints listen on."),
    http_port: int = typer.Option(0, "--http-port", help="HTTP (KServe v2) port [0: a free port]."),
    grpc_port: int = typer.Option(0, "--grpc-port", help="gRPC port [0: a free port]."),
    metrics_port: int = typer.Option(0, "--metrics-port", help="Prometheus metrics port [0: a free port]."),
    instances: int = typer.Option(1, help="Model instances (each holds one Predictor)."),
    precision: str = typer.Option("fp32", help="Graph the model runs: fp32 | fp16."),
    max_batch: int = typer.Option(None, "--max-batch", help="max_batch_size [the package's batch maximum]."),
    preferred_batch: list[int] = typer.Option([], "--preferred-batch", help="dynamic_batching preferred_batch_size "
                                              "(repeatable) [the package's optimal batch]."),
    max_queue_delay_us: int = typer.Option(2000, "--max-queue-delay-us", help="dynamic_batching "
                                           "max_queue_delay_microseconds: how long a request waits for others."),
    ready_timeout: float = typer.Option(120.0, "--ready-timeout", help="Seconds to wait for the model to be ready."),
) -> None:
    """Start Triton over a repository written for PACKAGE, wait until it is ready, serve until stopped."""
    import signal
    import tempfile

    from dga.serve.server import Endpoints, ServerError, TritonServer, bundled_server, free_port
    from dga.serve.triton import PYTHON_MODEL, Options, write_repository

    bundled_server()  # a missing [serve] extra is reported before anything is written
    opts = Options(precision=precision, instances=instances, max_batch=max_batch,
                   preferred_batch=tuple(preferred_batch), max_queue_delay_us=max_queue_delay_us,
                   models=(PYTHON_MODEL,))
    work = Path(tempfile.mkdtemp(prefix="dga-serve-"))
    server = TritonServer(work / "repository", Endpoints(host, 0, 0, 0), work)
    stop_requested: list[int] = []

    def forward(signum, _frame) -> None:
        stop_requested.append(signum)
        server.signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        summary = write_repository(package, server.repository, opts)
        for line in summary.lines():
            typer.echo(line, err=True)
        server.endpoints = Endpoints(host, http_port or free_port(host), grpc_port or free_port(host),
                                     metrics_port or free_port(host))
        e = server.endpoints
        typer.echo(f"starting tritonserver: HTTP {e.http}  gRPC {e.grpc}  metrics {e.metrics}", err=True)
        if not stop_requested:
            server.start()
            try:
                server.wait_ready(PYTHON_MODEL, ready_timeout)
            except ServerError:
                if stop_requested:
                    raise typer.Exit(0) from None
                raise
            typer.echo(f"ready: model '{PYTHON_MODEL}'  HTTP {e.http}  gRPC {e.grpc}  metrics {e.metrics}")
            typer.echo("stop with Ctrl-C or SIGTERM", err=True)
            rc = server.wait()
            if not stop_requested and rc != 0:
                raise typer.Exit(rc)
    finally:
        server.stop()  # waits for the server (SIGKILL after 30 s) and removes the temporary folder
        for s, handler in previous.items():
            signal.signal(s, handler)
    typer.echo("stopped", err=True)


app = single_command(serve, serve.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
