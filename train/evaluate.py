"""Accuracy, per-class accuracy, confusion matrix and (DGA) accuracy at each hierarchy level."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dga.train.model import ReprogramModel


@torch.no_grad()
def predict(model: ReprogramModel, batches: Iterable, device: torch.device) -> dict[str, torch.Tensor | list]:
    """Run the model in eval mode (fixed crops) over batches; collect logits and labels on the CPU."""
    was_training = model.training
    model.eval()
    logits, labels, levels = [], [], []
    for x, y in batches:
        out = model(x.to(device))
        logits.append(out.logits.float().cpu())
        labels.append(y.cpu())
        levels.append([z.float().cpu() for z in out.level_logits])
    model.train(was_training)
    n_levels = len(levels[0]) if levels else 0
    return {
        "logits": torch.cat(logits) if logits else torch.zeros(0, 0),
        "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        "level_logits": [torch.cat([b[i] for b in levels]) for i in range(n_levels)],
    }


def accuracy_report(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classnames: list[str],
    level_logits: list[torch.Tensor] | None = None,
    parents: list[list[int]] | None = None,
) -> dict:
    """Numbers a user reads: overall/per-class accuracy (%), confusion counts, level accuracy."""
    c = len(classnames)
    pred = logits.argmax(dim=1) if len(labels) else labels
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class_total = confusion.sum(dim=1)
    per_class = {
        name: (100.0 * confusion[i, i].item() / per_class_total[i].item()) if per_class_total[i] else None
        for i, name in enumerate(classnames)
    }
    report = {
        "samples": int(len(labels)),
        "accuracy": 100.0 * (pred == labels).float().mean().item() if len(labels) else 0.0,
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
    }
    if level_logits and parents:
        levels = []
        for i, (z, parent) in enumerate(zip(level_logits, parents, strict=True)):
            target = torch.tensor(parent)[labels]
            head_acc = 100.0 * (z.argmax(dim=1) == target).float().mean().item()
            # The super-class implied by the final sub-class prediction, at the same level.
            implied_acc = 100.0 * (torch.tensor(parent)[pred] == target).float().mean().item()
            levels.append({"level": i + 1, "groups": len(set(parent)), "level_head_accuracy": head_acc,
                           "implied_accuracy": implied_acc})
        report["hierarchy"] = levels
    return report


def evaluate_bundle(bundle, data, split: str = "test", dataset: str | None = None, val_fraction: float = 0.2,
                    test_fraction: float = 0.2, batch_size: int = 64, device: str = "auto", workers: int = 0) -> dict:
    """dga-eval: load a bundle and a dataset split, predict with the eval transform, return the report.

    Images are decoded exactly as deployment's self-checks decode them (the runtime's decoder,
    JPEG draft off). The report is ``accuracy_report``'s plus ``bundle``, ``split`` and ``method``.
    """
    from dga.errors import DataError
    from dga.train.bundle import load_bundle
    from dga.train.data.coop import load_dataset
    from dga.train.data.images import eval_transform
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
    return report


def report_lines(report: dict) -> list[str]:
    """The lines dga-eval prints for a report: accuracy, the three lowest classes, each hierarchy level."""
    lines = [f"{report['method']} on {report['split']} ({report['samples']} images): "
             f"accuracy {report['accuracy']:.2f}%"]
    per = [(v, k) for k, v in report["per_class_accuracy"].items() if v is not None]
    if per:
        lines.append("  lowest classes: " + ", ".join(f"{k} {v:.1f}%" for v, k in sorted(per)[:3]))
    for lv in report.get("hierarchy", []):
        lines.append(f"  level {lv['level']} ({lv['groups']} groups): level head {lv['level_head_accuracy']:.2f}%, "
                     f"implied by final prediction {lv['implied_accuracy']:.2f}%")
    return lines
