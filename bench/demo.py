"""dga-demo as one call: the whole flow offline on the embedded benchmark.

Generate scene-fills-24, measure the shipped small CLIP's zero-shot accuracy, train DGA on it,
export and self-check the package, verify it with dga-verify's runners, run the exported graph
over the test split with the Predictor. ``run_demo`` reports each step through ``log`` (one
string per step) and returns the numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoResult:
    data: Path
    bundle: Path
    package: Path
    zero_shot_accuracy: float  # %, the backbone without prompts on the test split
    accuracy: float  # %, the exported graph on the test split
    summary: object  # dga.runtime.results.Summary of the inference over the test split


def run_demo(out: Path, epochs: int = 4, shots: int = 16, seed: int = 1, device: str = "auto",
             log=print) -> DemoResult:
    """Generate the benchmark under ``out/data``, train ``out/demo.dga``, export ``out/demo.deploy``, infer."""
    from dga.bench.methods import CompareConfig, zero_shot_accuracy
    from dga.errors import DgaError
    from dga.export.package import ExportOptions, export_package
    from dga.runtime.predictor import Predictor
    from dga.runtime.results import Summary
    from dga.runtime.verifier import verify
    from dga.train.config import MethodConfig, TrainConfig
    from dga.train.run import TrainJob, run_training
    from dga.train.scenebench import NAME, TEMPLATE, make_benchmark
    from dga.train.trainer import resolve_device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    recipe = CompareConfig(data=data, out=out, shots=shots, epochs=epochs, device=str(resolve_device(device)))
    t = time.time()
    classes = make_benchmark(data)
    log(f"[1/6] generated {NAME} ({len(classes)} classes in 6 colour groups) in {data} ({time.time() - t:.1f}s)")

    zs = zero_shot_accuracy(recipe, TEMPLATE)
    log(f"[2/6] zero-shot {recipe.backbone} ({recipe.pretrained} weights) on {data / 'test'}: {zs:.1f}% "
        f"(chance {100.0 / len(classes):.1f}%)")

    job = TrainJob(data=data, out=out / "demo.dga", method="dga", backbone=recipe.backbone,
                   pretrained=recipe.pretrained, shots=shots, descriptions={"default": data / "descriptions.json"},
                   splits_dir=out / "splits", method_cfg=MethodConfig(template=TEMPLATE),
                   train_cfg=TrainConfig(epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed,
                                         device=device, crop_scale=recipe.crop_scale))
    bundle, result, training = run_training(job)
    log(f"[3/6] trained DGA: {bundle} (best val {result.best_val_acc:.1f}% at epoch {result.best_epoch}, "
        f"{training['wall_time_s']:.1f}s); plots in {bundle / 'plots'}")

    t = time.time()
    package, _ = export_package(bundle, out / "demo.deploy", ExportOptions(max_batch=64, verify_batches=[1, 7, 64]),
                                log=lambda s: log("      " + s.replace("\n", "\n      ")))
    log(f"[4/6] exported and self-checked {package} ({time.time() - t:.1f}s)")

    t = time.time()
    report = verify(package)
    log("      " + report.table().replace("\n", "\n      "))
    log(f"[5/6] {report.summary()} ({time.time() - t:.1f}s); the same from the shell: dga-verify {package}")
    if not report.ok:
        raise DgaError(f"{package} did not verify on this host (table above): report it with the table")

    predictor = Predictor.from_package(package, backend="onnxruntime", batch_size=64)
    try:
        start = time.perf_counter()
        results = list(predictor.predict_folder(data / "test"))
        wall = time.perf_counter() - start
    finally:
        predictor.close()
    good = [r for r in results if r.ok]
    correct = sum(Path(r.path).parent.name == r.label for r in good)
    summary = Summary(ok=len(good), failed=len(results) - len(good), wall_s=wall,
                      batch_latencies=predictor.batch_latencies, backend=predictor.runner.name,
                      batch_size=predictor.batch_size)
    acc = 100.0 * correct / max(len(good), 1)
    log(f"[6/6] inferred {data / 'test'} with the exported graph: accuracy {acc:.1f}% "
        f"(zero-shot {zs:.1f}%, {acc - zs:+.1f} points)")
    log(f"      {summary.line()}")
    log(f"      the same from the shell: dga-infer {data / 'test'} --model {package} --out {out / 'preds.csv'}")
    return DemoResult(data, bundle, package, zs, acc, summary)
