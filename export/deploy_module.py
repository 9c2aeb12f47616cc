"""The deployment module: uint8 images in, fused class logits out, one encoder pass.

Built from the very ReprogramModel that was trained (same ViewStack, same head formulas);
only constants are baked: the prompt frames (sigmoid(program) * M, with the normalisation
folded in) and, for DVP, the PRM
folded into one D x C head per prompt.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from dga.train.model import ReprogramModel

PRECISIONS = ("fp32", "fp16")


def fp16_encoder(visual: nn.Module) -> nn.Module:
    """A half-precision copy of the image tower with every LayerNorm kept in fp32.

    open_clip's LayerNormFp32 computes in fp32 with fp32 parameters and casts back, so the
    exporter writes explicit Cast nodes around each LayerNorm (what a strongly typed TensorRT
    network wants); matmuls and convolutions run in fp16.
    """
    from open_clip.transformer import LayerNormFp32

    enc = copy.deepcopy(visual).half()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.LayerNorm):
                ln = LayerNormFp32(child.normalized_shape, eps=child.eps,
                                   elementwise_affine=child.elementwise_affine)
                if child.elementwise_affine:
                    ln.weight.data.copy_(child.weight.data.float())
                    ln.bias.data.copy_(child.bias.data.float())
                setattr(module, name, ln)
            else:
                swap(child)

    swap(enc)
    return enc


class DeployModule(nn.Module):
    """images uint8 [B, S0, S0, 3] -> (logits [B, C] fp32, probs [B, C] fp32)."""

    def __init__(self, model: ReprogramModel, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        model = model.eval()
        self.precision = precision
        self.stack = copy.deepcopy(model.stack).eval()
        self.stack.programs.requires_grad_(False)
        with torch.no_grad():
            self.register_buffer("biases", self.stack.biases().detach().float().clone())
        visual = model.backbone.clip.visual
        self.encoder = fp16_encoder(visual) if precision == "fp16" else copy.deepcopy(visual)
        self.encoder.eval()
        self.head = model.head.for_deployment(self.stack.num_views).eval()
        self.num_views = self.stack.num_views
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def s0(self) -> int:
        return self.stack.s0

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        views = self.stack.build(x, self.biases)  # [B * V, 3, 224, 224], all views, one batch
        if self.precision == "fp16":
            views = views.half()
        feats = self.encoder(views).float()
        feats = F.normalize(feats, dim=-1).reshape(-1, self.num_views, feats.shape[-1])
        logits = self.head(feats).logits.float()
        return logits, torch.softmax(logits, dim=-1)
