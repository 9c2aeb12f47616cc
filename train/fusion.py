"""Every logit-level formula of METHODS.md, once. Training and export both call these.

All functions are plain tensor code (no Python branching on values) so they trace into ONNX.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cosine_logits(feats: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """s * f @ T^T for unit image features [..., D] and text rows [N, D] -> [..., N]."""
    return scale * feats @ text.t()


def topk_mean(scores: torch.Tensor, k: int) -> torch.Tensor:
    """AttrVR rule: per class, mean of the k largest of its m description scores.

    scores [B, C, m] -> [B, C]. Recomputed for every image (train and test).
    """
    return scores.topk(min(k, scores.shape[-1]), dim=-1).values.mean(dim=-1)


def alpha_mix(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * z_a + (1 - alpha) * z_b (AttrVR's DesAttr/DistAttr mix)."""
    return alpha * z_a + (1.0 - alpha) * z_b


def prm_logits(scores: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """DVP: z = S(x) @ omega with omega block-diagonal; stored compactly as prm [C, M'].

    scores [B, C, M'] (each class's own description scores) -> [B, C]. The full
    (C * M') x C matrix has omega[c * M' + v, c] = prm[c, v] and zeros elsewhere.
    """
    return (scores * prm).sum(dim=-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last axis, via log_softmax."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def upf_weights(view_logits: torch.Tensor, h0: float) -> torch.Tensor:
    """UPF weights for J views of one scale: view_logits [B, J, C] -> [B, J].

    w_j = max(H0 - H_j, 0), normalised to sum 1; if every w_j is 0 (all views too uncertain)
    the plain mean 1/J is used, so no division by zero can happen.
    """
    w = torch.clamp(h0 - entropy(view_logits), min=0.0)
    total = w.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[-1])
    return torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def upf(view_logits: torch.Tensor, h0: float, weighted: bool = True) -> torch.Tensor:
    """Entropy-weighted fusion of one scale's views [B, J, C] -> [B, C]; equal weights if not weighted."""
    if not weighted:
        return view_logits.mean(dim=1)
    w = upf_weights(view_logits, h0)
    return (w.unsqueeze(-1) * view_logits).sum(dim=1)


def hkp_expand(level_logits: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """e_c = z^(l)_{parent[c]}: level logits [B, S_l] -> per-class [B, C] (a gather)."""
    return level_logits.index_select(-1, parent)


def hkp(z: torch.Tensor, level_logits: list[torch.Tensor], parents: list[torch.Tensor]) -> torch.Tensor:
    """HKP on logits: z^SG = (1/L) sum_l expand(z^(l)) * softmax(z)."""
    p = F.softmax(z.float(), dim=-1)
    r = [hkp_expand(zl, par) * p for zl, par in zip(level_logits, parents, strict=True)]
    return torch.stack(r).mean(dim=0)


def visual_granularity(z: torch.Tensor, scale_logits: list[torch.Tensor]) -> torch.Tensor:
    """z^VG = (z + sum_e z^e) / (E + 1): the uncropped view counts as scale 0."""
    return torch.stack([z, *scale_logits]).mean(dim=0)


def lambda_fuse(z_vg: torch.Tensor, z_sg: torch.Tensor, lam: float) -> torch.Tensor:
    """z_final = (1 - lambda) z^VG + lambda z^SG."""
    return (1.0 - lam) * z_vg + lam * z_sg


def hierarchical_loss(
    z_final: torch.Tensor, level_logits: list[torch.Tensor], parents: list[torch.Tensor], y: torch.Tensor
) -> torch.Tensor:
    """DGA loss: CE(z_final, y) + (1/L) sum_l CE(z^(l), parent_l[y]); plain CE when L = 0."""
    loss = F.cross_entropy(z_final.float(), y)
    if level_logits:
        loss = loss + torch.stack(
            [F.cross_entropy(zl.float(), par[y]) for zl, par in zip(level_logits, parents, strict=True)]
        ).mean()
    return loss
