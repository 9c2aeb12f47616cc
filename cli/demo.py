"""dga-demo: the whole flow offline on the embedded benchmark: train DGA, export, run the graph.

The backbone is the project's own small CLIP (dga-shapes-vit-p32, pretrained here on generated
image-caption pairs, weights committed), the task the embedded few-shot benchmark scene-fills-24
(24 classes in 6 groups). So the accuracy printed means something: it is compared with the
backbone's zero-shot accuracy on the same test images.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-demo',
    'dga-demo --out /tmp/demo --epochs 3',
], "")


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Working folder (data, bundle, package)."),
    epochs: int = typer.Option(4, help="Training epochs (the best validation epoch is kept)."),
    shots: int = typer.Option(16, help="Training images per class."),
    seed: int = typer.Option(1, help="Few-shot draw and training seed."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Generate scene-fills-24, train DGA on the shipped small CLIP, export, self-check and run it."""
    from dga.bench.demo import run_demo

    run_demo(out, epochs=epochs, shots=shots, seed=seed, device=device, log=typer.echo)


app = single_command(demo, demo.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
