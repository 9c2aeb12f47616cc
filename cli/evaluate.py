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
    from dga.errors import DataError
    from dga.train.bundle import load_bundle
    from dga.train.data.coop import load_dataset
    from dga.train.data.images import eval_transform
    from dga.train.evaluate import accuracy_report, predict
    from dga.train.trainer import make_loader, resolve_device

    dev = resolve_device(device)
    b = load_bundle(bundle, dev)
    splits = load_dataset(data, dataset, val_fraction, test_fraction, seed=0)
    if splits.classnames != b.classnames:
        raise DataError(f"{data} has classes {splits.classnames[:3]}..., the bundle was trained on "
                        f"{b.classnames[:3]}...: evaluate on the dataset the bundle was trained for")
    if split not in ("train", "val", "test"):
        raise DataError(f"--split {split!r} must be train, val or test")
    items = splits.split(split)
    if not items:
        raise DataError(f"{data} has no {split} images")
    loader = make_loader(items, eval_transform(b.cfg["s0"]), batch_size, False, 0, workers)
    res = predict(b.model, loader, dev)
    parents = (b.manifest.get("hierarchy") or {}).get("parents")
    report = accuracy_report(res["logits"], res["labels"], b.classnames, res["level_logits"], parents)
    report.update({"bundle": str(bundle), "split": split, "method": b.manifest["method"]["name"]})
    typer.echo(f"{report['method']} on {split} ({report['samples']} images): accuracy {report['accuracy']:.2f}%")
    per = [(v, k) for k, v in report["per_class_accuracy"].items() if v is not None]
    if per:
        worst = sorted(per)[:3]
        typer.echo("  lowest classes: " + ", ".join(f"{k} {v:.1f}%" for v, k in worst))
    for lv in report.get("hierarchy", []):
        typer.echo(f"  level {lv['level']} ({lv['groups']} groups): level head {lv['level_head_accuracy']:.2f}%, "
                   f"implied by final prediction {lv['implied_accuracy']:.2f}%")
    if json_out:
        from dga.fsutil import atomic_write

        atomic_write(json_out, json.dumps(report, indent=1))


app = single_command(evaluate, evaluate.__doc__, EPILOG, name="dga-eval")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
