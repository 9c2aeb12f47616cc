"""dga-demo: the whole flow offline on generated data: train DGA, evaluate, export, run the graph.

Until the project ships its own small pretrained CLIP, the backbone here is a tiny open_clip ViT
with RANDOM weights (no weights can be downloaded offline), so accuracy is near chance: the demo
shows that every stage works and how fast, not what DGA achieves. Real runs: see the README.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-demo',
    'dga-demo --out /tmp/demo --epochs 5',
], "")


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Working folder (data, bundle, package)."),
    epochs: int = typer.Option(8, help="Training epochs."),
    shots: int = typer.Option(16, help="Training images per class."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Generate a 9-class shapes dataset, train DGA on a tiny random-weight CLIP, export and run it."""
    from dga.export.package import ExportOptions, export_package
    from dga.runtime.predictor import Predictor
    from dga.runtime.results import Summary
    from dga.train.config import MethodConfig, TrainConfig
    from dga.train.run import TrainJob, run_training
    from dga.train.synthetic import make_shapes_dataset, write_descriptions

    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    typer.echo("note: the backbone is a tiny open_clip ViT with RANDOM weights (offline demo); "
               "accuracy is near chance (11% for 9 classes) and says nothing about DGA.")
    t = time.time()
    classes = make_shapes_dataset(data, per_split={"train": shots, "val": 4, "test": 8}, size=96, seed=0)
    files = write_descriptions(data, classes)
    typer.echo(f"[1/4] generated {len(classes)} classes in {data} ({time.time() - t:.1f}s)")

    job = TrainJob(data=data, out=out / "demo.dga", method="dga", backbone="dga-test-vit-p32", pretrained=None,
                   shots=shots, descriptions={"default": files["default"]}, splits_dir=out / "splits",
                   method_cfg=MethodConfig(),
                   train_cfg=TrainConfig(epochs=epochs, batch_size=32, lr=10.0, seed=1, device=device))
    bundle, result, training = run_training(job)
    typer.echo(f"[2/4] trained DGA: {bundle} (best val {result.best_val_acc:.1f}% at epoch {result.best_epoch}, "
               f"{training['wall_time_s']:.1f}s); plots in {bundle / 'plots'}")

    t = time.time()
    package, _ = export_package(bundle, out / "demo.deploy", ExportOptions(max_batch=64, verify_batches=[1, 7, 32]),
                                log=lambda s: typer.echo("      " + s.replace("\n", "\n      ")))
    typer.echo(f"[3/4] exported and self-checked {package} ({time.time() - t:.1f}s)")

    predictor = Predictor.from_package(package, backend="onnxruntime", batch_size=32)
    start = time.perf_counter()
    results = list(predictor.predict_folder(data / "test"))
    wall = time.perf_counter() - start
    good = [r for r in results if r.ok]
    correct = sum(Path(r.path).parent.name == r.label for r in good)
    summary = Summary(ok=len(good), failed=len(results) - len(good), wall_s=wall,
                      batch_latencies=predictor.batch_latencies, backend=predictor.runner.name,
                      batch_size=predictor.batch_size)
    typer.echo(f"[4/4] inferred {data / 'test'}: accuracy {100.0 * correct / max(len(good), 1):.1f}% "
               f"(chance {100.0 / len(classes):.1f}%)")
    typer.echo(f"      {summary.line()}")
    typer.echo(f"      the same from the shell: dga-infer {data / 'test'} --model {package} --out {out / 'preds.csv'}")


app = single_command(demo, demo.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
