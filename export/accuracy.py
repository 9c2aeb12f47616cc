"""Measured accuracy of an exported package on labelled data, next to the torch module's.

What a user weighs before deploying a faster variant (``--views no-crops``, int8) or fp16: the same
images, decoded exactly as in training's evaluation, through the torch module and each graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dga.errors import DataError
from dga.export.deploy_module import DeployModule
from dga.export.verify import check_chunk, cpu_level, run_in_child, torch_logits
from dga.runtime.ort_child import make_session
from dga.runtime.package import ONNX_FILES


def labelled_images(data: Path, split: str, classnames: list[str], s0: int, limit: int | None = None):
    """uint8 [N, S0, S0, 3] and labels of a dataset split, decoded as training's evaluation decodes them."""
    from dga.export.images import decode_exact
    from dga.train.data.coop import load_dataset

    splits = load_dataset(data)
    if splits.classnames != classnames:
        raise DataError(f"{data} has other classes than the bundle; measure accuracy on the bundle's dataset")
    items = splits.split(split)[:limit] if limit else splits.split(split)
    if not items:
        raise DataError(f"{data} has no {split} images to measure accuracy on")
    images = decode_exact([p for p, _ in items], s0)
    return images, np.array([y for _, y in items])


def accuracy_table(package: Path, reference: DeployModule, images: np.ndarray, labels: np.ndarray,
                   precisions: list[str], batch: int = 64) -> dict[str, float]:
    """Top-1 accuracy (%) of the torch module and of each ONNX file on the same images."""

    def acc(logits: np.ndarray) -> float:
        return 100.0 * float((logits.argmax(1) == labels).mean())

    chunks = range(0, len(images), batch)
    out = {"torch": acc(np.concatenate([torch_logits(reference, images[i:i + batch]) for i in chunks]))}
    for precision in precisions:
        path = package / ONNX_FILES[precision]
        if precision == "fp32":
            session = make_session(str(path))
            logits = np.concatenate([session.run(["logits"], {"images": images[i:i + batch]})[0] for i in chunks])
        else:
            logits, note = run_in_child(path, images, cpu_level(precision), check_chunk(precision))
            if logits is None:
                continue
        out[f"onnx_{precision}"] = acc(logits)
    return out
