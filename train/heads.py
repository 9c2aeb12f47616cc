"""Text heads: class-logit rules over unit text embeddings (METHODS.md section 2)."""

from __future__ import annotations

import torch
from torch import nn

from dga.train.fusion import alpha_mix, cosine_logits, prm_logits, topk_mean
from dga.train.model import Head, Outputs
from dga.train.prm import fold_prm


def template_text(backbone, classnames: list[str], template: str) -> torch.Tensor:
    """Template head: one unit embedding per class, [C, D]."""
    sentences = [template.format(c.replace("_", " ")) for c in classnames]
    return backbone.encode_text(sentences).cpu()


def encode_sentence_lists(backbone, lists: list[list[str]]) -> list[torch.Tensor]:
    """Unit embeddings of several lists of sentences, one encoder pass: [[n_k, D] per list] (CPU)."""
    flat = [s for sentences in lists for s in sentences]
    return list(backbone.encode_text(flat).cpu().split([len(sentences) for sentences in lists]))


def description_text(backbone, sampled: dict[str, list[str]], classnames: list[str]) -> torch.Tensor:
    """Unit embeddings of each class's sampled descriptions, [C, m, D] (m equal for all)."""
    return torch.stack(encode_sentence_lists(backbone, [sampled[c] for c in classnames]))


def mean_rule_text(desc: torch.Tensor) -> torch.Tensor:
    """mean rule: s * mean_j cos(f, t_cj) = s * cos(f, mean_j t_cj) -> fold [C, m, D] to [C, D]."""
    return desc.mean(dim=1)


def mean_description_text(backbone, lists: list[list[str]]) -> torch.Tensor:
    """One unit text row per list of sentences (any lengths): normalised mean_rule_text, [K, D]."""
    rows = [mean_rule_text(e.unsqueeze(0)) for e in encode_sentence_lists(backbone, lists)]
    return nn.functional.normalize(torch.cat(rows).float(), dim=-1)


class TemplateHead(Head):
    """One view, one text row per class (VP, AR)."""

    def __init__(self, text: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("text", text.float().clone())
        self.scale = float(scale)

    def forward(self, feats: torch.Tensor) -> Outputs:
        return Outputs(cosine_logits(feats[:, 0], self.text, self.scale))


class AttributeHead(Head):
    """AttrVR: top-k mean over DesAttr and DistAttr descriptions, alpha-mixed."""

    def __init__(self, des: torch.Tensor, dist: torch.Tensor, scale: float, k: int, alpha: float):
        super().__init__()
        self.register_buffer("des", des.float().clone())
        self.register_buffer("dist", dist.float().clone())
        self.scale, self.k, self.alpha = float(scale), int(k), float(alpha)

    def class_logits(self, f: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        scores = self.scale * torch.einsum("bd,cmd->bcm", f, desc)
        return topk_mean(scores, self.k)

    def forward(self, feats: torch.Tensor) -> Outputs:
        f = feats[:, 0]
        return Outputs(alpha_mix(self.class_logits(f, self.des), self.class_logits(f, self.dist), self.alpha))


class PrmHead(Head):
    """DVP: K prompts (views); each description is scored by the view that owns it; z = S @ omega."""

    def __init__(self, desc: torch.Tensor, owner: torch.Tensor, prm: torch.Tensor, scale: float, topk: int = 3):
        super().__init__()
        self.topk = int(topk)  # PRM estimation: top-k of the true class's description scores
        self.register_buffer("desc", desc.float().clone())  # [C, M', D]
        self.register_buffer("owner", owner.long().clone())  # [C, M'] view index per description
        self.register_buffer("prm", prm.float().clone())  # [C, M'] block diagonal of omega
        self.scale = float(scale)

    def description_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """S(x): [B, V, D] -> [B, C, M'], description (c, m) scored by view owner[c, m]."""
        all_scores = self.scale * torch.einsum("bvd,cmd->bvcm", feats, self.desc)
        idx = self.owner.unsqueeze(0).unsqueeze(0).expand(feats.shape[0], 1, *self.owner.shape)
        return all_scores.gather(1, idx).squeeze(1)

    def folded(self, num_views: int) -> torch.Tensor:
        """Deployment form: W [V, D, C] so that logits = s * sum_v f_v @ W_v."""
        return fold_prm(self.desc, self.owner, self.prm, num_views)

    def for_deployment(self, num_views: int) -> Head:
        return FoldedPrmHead(self.folded(num_views), self.scale)

    def forward(self, feats: torch.Tensor) -> Outputs:
        scores = self.description_scores(feats)
        return Outputs(prm_logits(scores, self.prm), scores=scores)


class FoldedPRM(nn.Module):
    """Deployment form of the PRM: each prompt's descriptions and omega folded into one D x C head."""

    def __init__(self, weights: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("weights", weights.float().clone())  # [V, D, C]
        self.scale = float(scale)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.einsum("bvd,vdc->bc", feats, self.weights)


class FoldedPrmHead(Head):
    """What export traces for DVP: K small matrix products instead of C * M' scores."""

    def __init__(self, weights: torch.Tensor, scale: float):
        super().__init__()
        self.prm = FoldedPRM(weights, scale)

    def forward(self, feats: torch.Tensor) -> Outputs:
        return Outputs(self.prm(feats))
