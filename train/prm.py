"""DVP's probabilistic reweighting matrix (PRM): counting, estimation, folding.

omega[(c, v), c] = n[c, v] / (k * N_c), where n[c, v] counts how often description v of class c
is among the top k of that class's M' description scores for a training sample of class c.
Stored compactly as prm [C, M'] (the block diagonal of the (C * M') x C matrix).
"""

from __future__ import annotations

import torch


def initial_prm(num_classes: int, per_class: int) -> torch.Tensor:
    """Plain averaging: 1 / M' on each class's own descriptions."""
    return torch.full((num_classes, per_class), 1.0 / per_class)


def topk_counts(scores: torch.Tensor, labels: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Add-up contribution of one batch: scores [B, C, M'], labels [B] -> counts [C, M']."""
    own = scores[torch.arange(scores.shape[0]), labels]  # [B, M'] scores of the true class
    top = own.topk(min(k, own.shape[-1]), dim=-1).indices
    counts = torch.zeros(scores.shape[1], scores.shape[2], dtype=torch.float64, device=scores.device)
    rows = labels.unsqueeze(1).expand_as(top)
    counts.index_put_((rows.reshape(-1), top.reshape(-1)), torch.ones(top.numel(), dtype=torch.float64,
                      device=scores.device), accumulate=True)
    return counts


def estimate_prm(counts: torch.Tensor, samples_per_class: torch.Tensor, k: int = 3) -> torch.Tensor:
    """prm[c, v] = n[c, v] / (k * N_c); a class with no samples keeps plain averaging."""
    n_c = samples_per_class.to(torch.float64).unsqueeze(1)
    prm = counts / (k * n_c.clamp(min=1))
    fallback = torch.full_like(prm, 1.0 / prm.shape[1])
    return torch.where(n_c > 0, prm, fallback).float()


def fold_prm(desc: torch.Tensor, owner: torch.Tensor, prm: torch.Tensor, num_views: int) -> torch.Tensor:
    """Fold descriptions, their owning prompt and the PRM into one head per prompt.

    desc [C, M', D], owner [C, M'] (which view scores each description), prm [C, M'] ->
    W [V, D, C] with W[v, :, c] = sum_{m: owner[c, m] = v} prm[c, m] * desc[c, m]; then
    z = s * sum_v f_v @ W[v] equals prm_logits of the per-description scores.
    """
    onehot = torch.nn.functional.one_hot(owner, num_views).to(desc.dtype)  # [C, M', V]
    return torch.einsum("cmv,cm,cmd->vdc", onehot, prm.to(desc.dtype), desc)
