"""Helpers shared by method builders: description sampling and text embedding."""

from __future__ import annotations

import torch

from dga.errors import ConfigError
from dga.train.data.descriptions import sample_descriptions
from dga.train.heads import description_text


def sampled_description_text(ctx, role: str, seed_offset: int = 0) -> tuple[torch.Tensor, dict]:
    """Sample m descriptions per class from role's file and embed them: ([C, m, D], sentences)."""
    if role not in ctx.descriptions:
        raise ConfigError(f"method needs a '{role}' description file; pass it with the matching option")
    cfg = ctx.config
    sampled = sample_descriptions(ctx.descriptions[role], m=cfg.m, min_chars=cfg.min_chars,
                                  seed=ctx.seed + seed_offset)
    return description_text(ctx.backbone, sampled, ctx.classnames), sampled
