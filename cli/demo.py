"""dga-demo: the whole flow offline on the embedded benchmark: train DGA, export, run the graph.

The backbone is the project's own small CLIP (dga-shapes-vit-p32, pretrained here on generated
image-caption pairs, weights committed), the task the embedded few-shot benchmark scene-fills-24
(24 classes in 6 groups). So the accuracy printed means something: it is compared with the
backbone's zero-shot accuracy on the same test images.
"""

from __future__ import annotations

import time
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
    from dga.bench.methods import CompareConfig, zero_shot_accuracy
    from dga.export.package import ExportOptions, export_package
    from dga.runtime.predictor import Predictor
    from dga.runtime.results import Summary
    from dga.train.config import MethodConfig, TrainConfig
    from dga.train.run import TrainJob, run_training
    from dga.train.scenebench import NAME, TEMPLATE, make_benchmark
    from dga.train.trainer import resolve_device

    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    recipe = CompareConfig(data=data, out=out, shots=shots, epochs=epochs, device=str(resolve_device(device)))
    t = time.time()
    classes = make_benchmark(data)
    typer.echo(f"[1/5] generated {NAME} ({len(classes)} classes in 6 colour groups) in {data} "
               f"({time.time() - t:.1f}s)")

    zs = zero_shot_accuracy(recipe, TEMPLATE)
    typer.echo(f"[2/5] zero-shot {recipe.backbone} ({recipe.pretrained} weights) on {data / 'test'}: {zs:.1f}% "
               f"(chance {100.0 / len(classes):.1f}%)")

    job = TrainJob(data=data, out=out / "demo.dga", method="dga", backbone=recipe.backbone,
                   pretrained=recipe.pretrained, shots=shots, descriptions={"default": data / "descriptions.json"},
                   splits_dir=out / "splits", method_cfg=MethodConfig(template=TEMPLATE),
                   train_cfg=TrainConfig(epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed,
                                         device=device, crop_scale=recipe.crop_scale))
    bundle, result, training = run_training(job)
    typer.echo(f"[3/5] trained DGA: {bundle} (best val {result.best_val_acc:.1f}% at epoch {result.best_epoch}, "
               f"{training['wall_time_s']:.1f}s); plots in {bundle / 'plots'}")

    t = time.time()
    package, _ = export_package(bundle, out / "demo.deploy", ExportOptions(max_batch=64, verify_batches=[1, 7, 64]),
                                log=lambda s: typer.echo("      " + s.replace("\n", "\n      ")))
    typer.echo(f"[4/5] exported and self-checked {package} ({time.time() - t:.1f}s)")

    predictor = Predictor.from_package(package, backend="onnxruntime", batch_size=64)
    start = time.perf_counter()
    results = list(predictor.predict_folder(data / "test"))
    wall = time.perf_counter() - start
    good = [r for r in results if r.ok]
    correct = sum(Path(r.path).parent.name == r.label for r in good)
    summary = Summary(ok=len(good), failed=len(results) - len(good), wall_s=wall,
                      batch_latencies=predictor.batch_latencies, backend=predictor.runner.name,
                      batch_size=predictor.batch_size)
    acc = 100.0 * correct / max(len(good), 1)
    typer.echo(f"[5/5] inferred {data / 'test'} with the exported graph: accuracy {acc:.1f}% "
               f"(zero-shot {zs:.1f}%, {acc - zs:+.1f} points)")
    typer.echo(f"      {summary.line()}")
    typer.echo(f"      the same from the shell: dga-infer {data / 'test'} --model {package} --out {out / 'preds.csv'}")


app = single_command(demo, demo.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
