"""DVP: decoupled visual prompts (by cause or by k-means cluster) with the PRM (METHODS.md 4)."""

from __future__ import annotations

import torch
from sklearn.cluster import KMeans

from dga.train.heads import PrmHead
from dga.train.methods import MethodSpec, register, zero_programs
from dga.train.methods.common import sampled_description_text
from dga.train.prm import estimate_prm, initial_prm, topk_counts
from dga.train.views import View


def cause_roles(cfg) -> tuple[str, ...]:
    return tuple(f"cause{i}" for i in range(cfg.prompts))


def _views(cfg: dict) -> list[View]:
    k = cfg["prompts"]
    return [View(f"prompt{i}", tuple(1.0 if j == i else 0.0 for j in range(k))) for i in range(k)]


def _prepare_cse(ctx):
    """Prompt i scores cause i's m descriptions; class blocks laid out as index i * m + j."""
    parts, sentences = [], {}
    for i, role in enumerate(cause_roles(ctx.config)):
        desc, s = sampled_description_text(ctx, role, seed_offset=i)
        parts.append(desc)
        sentences[role] = s
    desc = torch.cat(parts, dim=1)  # [C, K * m, D]
    c, m = desc.shape[0], ctx.config.m
    owner = torch.arange(ctx.config.prompts).repeat_interleave(m).unsqueeze(0).expand(c, -1)
    return _prm_tensors(ctx, desc, owner), sentences


def cluster_owner(desc: torch.Tensor, k: int) -> torch.Tensor:
    """k-means (sklearn, random_state 0) over all C * m description embeddings -> owner [C, m]."""
    c, m, d = desc.shape
    labels = KMeans(n_clusters=k, random_state=0, n_init="auto").fit_predict(desc.reshape(-1, d).double().numpy())
    return torch.as_tensor(labels, dtype=torch.long).view(c, m)


def _prepare_cls(ctx):
    desc, sentences = sampled_description_text(ctx, "default")
    owner = cluster_owner(desc, ctx.config.prompts)
    return _prm_tensors(ctx, desc, owner), {"default": sentences}


def _prm_tensors(ctx, desc, owner):
    return {
        "stack.programs": zero_programs(ctx.config.prompts),
        "head.desc": desc,
        "head.owner": owner.contiguous(),
        "head.prm": initial_prm(desc.shape[0], desc.shape[1]),
    }


def _prepare(fn):
    def prepare(ctx):
        tensors, sentences = fn(ctx)
        return {"sentences": sentences}, tensors
    return prepare


@torch.no_grad()
def reestimate_prm(model, batches, device) -> torch.Tensor:
    """One pass over training batches with the current prompts: count top-k, set the PRM."""
    head = model.head
    was_training = model.training
    model.eval()
    counts = torch.zeros_like(head.prm, dtype=torch.float64)
    per_class = torch.zeros(head.prm.shape[0], dtype=torch.long, device=head.prm.device)
    k = head.topk
    for x, y in batches():
        x, y = x.to(device), y.to(device)
        scores = head.description_scores(model.encode_views(x))
        counts += topk_counts(scores.float(), y, k)
        per_class += torch.bincount(y, minlength=per_class.shape[0])
    head.prm.copy_(estimate_prm(counts, per_class, k))
    model.train(was_training)
    return head.prm


def _head(cfg, t, scale):
    return PrmHead(t["desc"], t["owner"], t["prm"], scale, cfg["topk"])


for _name, _summary, _roles, _fn in (
    ("dvp-cse", "DVP-cse: one padding prompt per cause description file, PRM", cause_roles, _prepare_cse),
    ("dvp-cls", "DVP-cls: one padding prompt per k-means cluster of descriptions, PRM",
     lambda c: ("default",), _prepare_cls),
):
    register(MethodSpec(
        name=_name, summary=_summary, prompt_kind="pad", description_roles=_roles,
        prepare=_prepare(_fn), views=_views, build_head=_head,
        # Epoch 0 only collects counts with the initial prompts; each later epoch re-estimates.
        on_train_start=reestimate_prm, on_epoch_end=reestimate_prm,
    ))
