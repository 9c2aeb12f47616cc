"""dga-verify: check a deployment package on this host against its golden outputs."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EXIT_NOT_VERIFIED = 3  # a runner's numbers are outside tolerance, or a required runner could not run

EPILOG = epilog([
    'dga-verify run.deploy',
    'dga-verify run.deploy --require cuda --require tensorrt      # fail unless these ran and passed',
    'dga-verify run.deploy --json verify.json --bundle runs/pets.dga',
], f"Runners: onnxruntime on the cpu, cuda and tensorrt-ep providers (each precision), the tensorrt engine, "
   f"the torch module (needs the [train] extra and the bundle) and torch-cuda (that module with CUDA graphs on a "
   f"CUDA GPU, fp16 and fp32). Status: pass, FAIL, or skipped with the reason; "
   f"a skipped runner is never a pass. Exit codes: 0 every runner that ran passed and every required one ran; "
   f"{EXIT_NOT_VERIFIED} a runner failed or a required runner was skipped; 2 a usage error, or a package that "
   f"is missing files, altered or of another format (one sentence naming the file).")


def verify(
    package: Path = typer.Argument(..., help="Deployment package written by dga-export."),
    require: list[str] = typer.Option([], "--require", help="Runner that must run and pass (repeatable): "
                                      "onnxruntime | cpu | cuda | tensorrt-ep | tensorrt | torch | torch-cuda."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
    bundle: Path = typer.Option(None, help="Model bundle for the torch runner [the path recorded at export]."),
    device: int = typer.Option(0, help="GPU index for the cuda, tensorrt-ep, tensorrt and torch-cuda runners."),
    timeout: float = typer.Option(600.0, help="Seconds each runner may take before it counts as failed."),
) -> None:
    """Run every runner this host has over the package's golden inputs and compare with the trained model."""
    import json

    from dga.fsutil import atomic_write
    from dga.runtime.verifier import verify as verify_package

    report = verify_package(package, require, bundle=bundle, device=device, timeout=timeout,
                            log=lambda line: typer.echo(line, err=True))
    typer.echo(report.table())
    typer.echo(report.summary())
    if json_out:
        atomic_write(json_out, json.dumps(report.to_json(), indent=1))
    if not report.ok:
        raise typer.Exit(EXIT_NOT_VERIFIED)


app = single_command(verify, verify.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
