"""dga-compare: every method on the embedded benchmark over seeds, as the README's results table."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-compare',
    'dga-compare --seeds 1 --rows zero-shot,AR,DGA --epochs 2 --out /tmp/cmp',
], 'Writes OUT/results.json (every run, resumable: run again to continue) and OUT/results.md (the table). '
   'Rows: zero-shot, VP, AR, AttrVR, DVP-cse, DVP-cls, DGA, "DGA w/o HKP", "DGA w/o SG", "DGA w/o UPF", '
   '"DGA w/o VG".')


def compare(
    out: Path = typer.Option(Path("bench/results/methods-scene-fills-24"), "--out", "-o",
                             help="Folder for results.json, results.md and the bundles."),
    data: Path = typer.Option(None, help="Benchmark folder [OUT/data, generated if missing]."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated training seeds."),
    rows: str = typer.Option("all", help="Comma-separated rows (see below) or 'all'."),
    shots: int = typer.Option(16, help="Training images per class."),
    epochs: int = typer.Option(6, help="Training epochs per run."),
    lr: float = typer.Option(10.0, help="SGD learning rate."),
    batch_size: int = typer.Option(32, help="Batch size."),
    crop_scale: float = typer.Option(0.5, help="Smallest area fraction of RandomResizedCrop."),
    backbone: str = typer.Option("dga-shapes-vit-p32", help="open_clip model name."),
    pretrained: str = typer.Option("shipped", help="Weights: 'shipped' (committed), a tag or a file."),
    template: str = typer.Option(None, help="Text template with {} [the benchmark's]."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
) -> None:
    """Train zero-shot, VP, AR, AttrVR, DVP-cse, DVP-cls, DGA and its four ablations; tabulate test accuracy."""
    from dga.bench.methods import ROWS, CompareConfig, row_by_name, run_compare
    from dga.errors import ConfigError

    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
        names = tuple(r.name for r in ROWS) if rows == "all" else tuple(
            row_by_name(n.strip()).name for n in rows.split(","))
    except ValueError as exc:
        raise ConfigError(f"--seeds/--rows: {exc}") from exc
    cfg = CompareConfig(data=data or out / "data", out=out, seeds=seed_list, shots=shots, epochs=epochs, lr=lr,
                        batch_size=batch_size, crop_scale=crop_scale, backbone=backbone,
                        pretrained=None if pretrained.lower() == "none" else pretrained, template=template,
                        rows=names, device=device)
    run_compare(cfg, log=typer.echo)
    typer.echo((out / "results.md").read_text())


app = single_command(compare, compare.__doc__, EPILOG, name="dga-compare")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
