"""dga-eval: accuracy of a model bundle on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-eval pets.dga data/oxford_pets --split test',
    'dga-eval run.dga my_images/ --split val --json report.json',
], "")


def evaluate(
    bundle: Path = typer.Argument(..., help="Model bundle directory written by dga-train."),
    data: Path = typer.Argument(..., help="Dataset root (same layout rules as dga-train)."),
    split: str = typer.Option("test", help="train | val | test."),
    dataset: str = typer.Option(None, help="Force a layout: a CoOp name or imagefolder."),
    val_fraction: float = typer.Option(0.2, help="As in dga-train, for ImageFolder data without val/."),
    test_fraction: float = typer.Option(0.2, help="As in dga-train, for ImageFolder data without test/."),
    batch_size: int = typer.Option(64, help="Batch size."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    workers: int = typer.Option(0, help="Data loader worker processes."),
    json_out: Path = typer.Option(None, "--json", help="Also write the full report (confusion matrix...) here."),
) -> None:
    """Report accuracy, per-class accuracy and, for DGA, accuracy at each hierarchy level."""
    from dga.train.evaluate import evaluate_bundle, report_lines

    report = evaluate_bundle(bundle, data, split, dataset=dataset, val_fraction=val_fraction,
                             test_fraction=test_fraction, batch_size=batch_size, device=device, workers=workers)
    for line in report_lines(report):
        typer.echo(line)
    if json_out:
        from dga.fsutil import atomic_write

        atomic_write(json_out, json.dumps(report, indent=1))


app = single_command(evaluate, evaluate.__doc__, EPILOG, name="dga-eval")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
