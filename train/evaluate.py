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
