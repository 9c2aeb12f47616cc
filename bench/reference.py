"""The papers' way, as a reference: a PyTorch eager loop that runs the encoder once per view."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from dga.train.model import ReprogramModel


class PerViewLoop(torch.nn.Module):
    """Same numbers as the fused module, but V separate encoder calls of batch B each."""

    def __init__(self, model: ReprogramModel):
        super().__init__()
        self.model = model.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        stack = self.model.stack
        frames = stack.frames()
        feats = []
        for i, xv in enumerate(stack.view_images(x)):
            from dga.train.prompts import apply_frame

            inp = apply_frame(stack.kind, xv, frames[i:i + 1], stack.mean, stack.std, stack.size, stack.s0)
            feats.append(F.normalize(self.model.backbone.encode_image(inp).float(), dim=-1))
        return self.model.head(torch.stack(feats, dim=1)).logits
