"""DGA: dual granularity alignment (METHODS.md section 5).

Programs, in order: delta_0 (sub-class), delta_1..delta_L (one per hierarchy level), then one
local prompt per crop scale. Views, in order: global, level 1..L, then scale e = 1..E with J
crops each (centre, top-left, top-right, bottom-left, bottom-right at inference).
"""

from __future__ import annotations

import torch
from torch import nn

from dga.train.data.imagefolder import _names
from dga.train.fusion import (
    cosine_logits,
    hierarchical_loss,
    hkp,
    hkp_expand,
    lambda_fuse,
    upf,
    visual_granularity,
)
from dga.train.heads import mean_description_text, mean_rule_text, template_text
from dga.train.hierarchy import (
    Hierarchy,
    build_hierarchy,
    check_level_sizes,
    class_prototypes,
    default_level_sizes,
    hierarchy_sentences,
    superclass_text,
)
from dga.train.methods import MethodSpec, register, zero_programs
from dga.train.methods.common import sampled_description_text
from dga.train.model import Head, Outputs
from dga.train.views import CROP_POSITIONS, View, ViewStack, fixed_box


def structure(cfg: dict) -> tuple[int, int, int]:
    """(L levels in use, E scales in use, J crops) after the ablation switches."""
    levels = len(cfg["hierarchy"]["level_sizes"]) if cfg["sg"] and cfg.get("hierarchy") else 0
    scales = cfg["scales"] if cfg["vg"] else 0
    return levels, scales, cfg["crops"]


def views(cfg: dict) -> list[View]:
    n_levels, n_scales, n_crops = structure(cfg)
    n_prog = 1 + n_levels + n_scales

    def onehot(i: int) -> tuple[float, ...]:
        return tuple(1.0 if j == i else 0.0 for j in range(n_prog))

    if cfg["hkp"] and n_levels:
        # HKP, prompt side: delta_global = (delta_0 + sum_l delta_l) / (L + 1), in program space.
        mix = tuple(1.0 / (n_levels + 1) if j <= n_levels else 0.0 for j in range(n_prog))
    else:
        mix = onehot(0)
    out = [View("global", mix)]
    out += [View(f"level{level}", onehot(level)) for level in range(1, n_levels + 1)]
    for e in range(1, n_scales + 1):
        side = cfg["s0"] - cfg["crop_step"] * e
        for j in range(n_crops):
            box = fixed_box(CROP_POSITIONS[j], cfg["s0"], side)
            out.append(View(f"scale{e}/{CROP_POSITIONS[j]}", onehot(n_levels + e), side, box))
    return out


class UPF(nn.Module):
    """Uncertainty-guided fusion of one scale's crop views (a module so export names its nodes)."""

    def __init__(self, h0: float, weighted: bool):
        super().__init__()
        self.h0, self.weighted = float(h0), bool(weighted)

    def forward(self, crop_logits: torch.Tensor) -> torch.Tensor:
        return upf(crop_logits, self.h0, weighted=self.weighted)


class HKP(nn.Module):
    """Hierarchical knowledge propagation on logits (or, ablated, the finest level's expansion)."""

    def __init__(self, parents: list[list[int]], enabled: bool):
        super().__init__()
        self.enabled, self.n_levels = bool(enabled), len(parents)
        for level, parent in enumerate(parents):
            self.register_buffer(f"parent_{level}", torch.tensor(parent, dtype=torch.long), persistent=False)

    def parents(self) -> list[torch.Tensor]:
        return [getattr(self, f"parent_{i}") for i in range(self.n_levels)]

    def forward(self, z: torch.Tensor, level_logits: list[torch.Tensor]) -> torch.Tensor:
        if self.enabled:
            return hkp(z, level_logits, self.parents())
        # Ablation "no HKP": keep the expansion of the finest level, no redistribution.
        return hkp_expand(level_logits[0], self.parents()[0])


class DgaHead(Head):
    """Sub-class logits of the global view, level logits, UPF over crops, HKP, lambda fusion."""

    def __init__(self, cfg: dict, t0: torch.Tensor, level_text: list[torch.Tensor], scale: float):
        super().__init__()
        self.n_levels, self.n_scales, self.n_crops = structure(cfg)
        self.scale, self.lam = float(scale), float(cfg["lam"])
        self.register_buffer("t0", t0.float().clone())
        for level, t in enumerate(level_text):
            self.register_buffer(f"level_text_{level}", t.float().clone())
        parents = cfg["hierarchy"]["parents"][: self.n_levels] if self.n_levels else []
        self.upf = UPF(cfg["h0"], cfg["upf"])
        self.hkp = HKP(parents, cfg["hkp"])

    def level_texts(self) -> list[torch.Tensor]:
        return [getattr(self, f"level_text_{i}") for i in range(self.n_levels)]

    def parents(self) -> list[torch.Tensor]:
        return self.hkp.parents()

    def forward(self, feats: torch.Tensor) -> Outputs:
        z = cosine_logits(feats[:, 0], self.t0, self.scale)
        level_logits = [cosine_logits(feats[:, 1 + i], t, self.scale) for i, t in enumerate(self.level_texts())]
        first_crop = 1 + self.n_levels
        scale_logits = []
        for e in range(self.n_scales):
            lo = first_crop + e * self.n_crops
            crop_logits = cosine_logits(feats[:, lo : lo + self.n_crops], self.t0, self.scale)  # [B, J, C]
            scale_logits.append(self.upf(crop_logits))
        z_vg = visual_granularity(z, scale_logits) if scale_logits else z
        if not self.n_levels:
            return Outputs(z_vg, level_logits)
        return Outputs(lambda_fuse(z_vg, self.hkp(z, level_logits), self.lam), level_logits)

    def loss(self, out: Outputs, y: torch.Tensor) -> torch.Tensor:
        return hierarchical_loss(out.logits, out.level_logits, self.parents(), y)


def build_head(cfg: dict, t: dict, scale: float) -> DgaHead:
    n_levels = structure(cfg)[0]
    return DgaHead(cfg, t["t0"], [t[f"level_text_{i}"] for i in range(n_levels)], scale)


@torch.no_grad()
def initial_prompt_features(ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit features of every training image under the initial (mid-grey) padding prompt."""
    info = ctx.backbone.info
    stack = ViewStack("pad", ctx.config.s0, [View("global", (1.0,))], zero_programs(1, info.image_size),
                      info.mean, info.std, size=info.image_size).eval()
    device = next(ctx.backbone.parameters()).device
    stack.to(device)
    feats, labels = [], []
    for x, y in ctx.train_batches():
        feats.append(ctx.backbone.encode_image(stack(x.to(device))).float().cpu())
        labels.append(y.cpu())
    return nn.functional.normalize(torch.cat(feats), dim=-1), torch.cat(labels)


HIERARCHY_ROLE = "hierarchy"  # PrepareContext.descriptions role of --hierarchy-descriptions {group key: sentences}


def level_text(ctx, hierarchy: Hierarchy, t0: torch.Tensor) -> tuple[list[torch.Tensor], dict | None]:
    """T_l of every level, [S_l, D] each, and the super-class sentences used (None without a file).

    Without a hierarchy description file: the normalised mean of the member classes' text rows.
    With one: the normalised mean of the encoded sentences of each group's key (every group must
    have one; keys matching no group are reported in ctx.notes and not used).
    """
    if HIERARCHY_ROLE not in ctx.descriptions:
        return [superclass_text(t0, parent, size)
                for size, parent in zip(hierarchy.level_sizes, hierarchy.parents, strict=True)], None
    per_level, used, extra = hierarchy_sentences(ctx.descriptions[HIERARCHY_ROLE], ctx.classnames, hierarchy)
    if extra:
        ctx.notes.append(f"the --hierarchy-descriptions file has {len(extra)} key(s) that name no group of "
                         f"this hierarchy, not used: {_names(extra)}")
    texts = [mean_description_text(ctx.backbone, groups) for groups in per_level]
    return texts, used


def prepare(ctx):
    cfg, n_classes = ctx.config, len(ctx.classnames)
    extra: dict = {"sentences": None, "hierarchy": None}
    sentences: dict = {}
    if "default" in ctx.descriptions:
        desc, sentences["default"] = sampled_description_text(ctx, "default")
        t0 = mean_rule_text(desc)
    else:
        t0 = template_text(ctx.backbone, ctx.classnames, cfg.template)
    tensors = {"head.t0": t0}
    n_levels = 0
    if cfg.sg:
        sizes = (check_level_sizes(cfg.level_sizes, n_classes) if cfg.level_sizes
                 else default_level_sizes(n_classes, cfg.levels))
        if sizes:
            feats, labels = initial_prompt_features(ctx)
            protos = class_prototypes(feats, labels, n_classes)
            hierarchy: Hierarchy = build_hierarchy(protos.numpy(), sizes)
            extra["hierarchy"] = hierarchy.to_json()
            n_levels = hierarchy.num_levels
            texts, used = level_text(ctx, hierarchy, t0)
            for i, t in enumerate(texts):
                tensors[f"head.level_text_{i}"] = t
            if used is not None:
                sentences[HIERARCHY_ROLE] = used
        else:
            ctx.notes.append(f"{n_classes} classes are too few for a label hierarchy: the SG branch is off")
    if HIERARCHY_ROLE in ctx.descriptions and not n_levels:
        ctx.notes.append("no label hierarchy (SG branch off): the --hierarchy-descriptions file is not used")
    extra["sentences"] = sentences or None
    n_scales = cfg.scales if cfg.vg else 0
    tensors["stack.programs"] = zero_programs(1 + n_levels + n_scales, ctx.backbone.info.image_size)
    return extra, tensors


register(MethodSpec(
    name="dga",
    summary="DGA: label hierarchy (PLH), level prompts with HKP, multi-scale crops with UPF",
    prompt_kind="pad",
    description_roles=lambda c: (),  # a description file is optional (template otherwise)
    prepare=prepare, views=views, build_head=build_head,
))
