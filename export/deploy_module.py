"""The deployment module: uint8 images in, fused class logits out, one encoder pass.

Built from the very ReprogramModel that was trained (same ViewStack, same head formulas);
only constants are baked: the prompt frames (sigmoid(program) * M, with the normalisation
folded in) and, for DVP, the PRM
folded into one D x C head per prompt.

Patch-embedding folding. The encoder's first layer is a linear, bias-free, non-overlapping
patch convolution P, and every view input is Pad(x / std) + bias_v with a padding that is a
whole number of patches (S0 = 192 in 224 with 16-px patches). So

    P(Pad(x / std) + bias_v) = PadTokens(P'(x)) + P(bias_v),   P' = P with 1 / (255 std) in its weights,

where x is the raw 0-255 view and P(bias_v) a constant token grid per view. The graph then never
builds the 224-px prompted images (on a CPU the Pad and Add over them cost ~15 % of the run);
when the padding is a whole number of patches it convolves S0-px views and pads the token grid,
otherwise the convolution's own zero padding stands in for Pad. The numbers are the same up to
float rounding (checked by the export self-check and tests).

``sdpa=True`` runs the encoder's attention through torch's fused scaled-dot-product kernel when
the module runs in torch (the torch-cuda runner, benchmarks); an export of such a module still
writes the explicit matmul form (export/attention.py), so the graph does not depend on it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from dga.export.attention import export_friendly
from dga.train.model import ReprogramModel
from dga.train.prompts import pad_amounts

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


def foldable_padding(stack, conv: nn.Module) -> tuple[int, int] | None:
    """(lo, hi) pixels of zero padding when the patch embedding can be folded (see the module doc)."""
    if not (isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.kernel_size == conv.stride
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.kernel_size[0] == conv.kernel_size[1]):
        return None
    if stack.kind != "pad":
        return (0, 0) if stack.s0 == stack.size else None
    return pad_amounts(stack.s0, stack.size)


class DeployModule(nn.Module):
    """images uint8 [B, S0, S0, 3] -> (logits [B, C] fp32, probs [B, C] fp32)."""

    def __init__(self, model: ReprogramModel, precision: str = "fp32", sdpa: bool = False):
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
        export_friendly(self.encoder, sdpa)
        self.encoder.eval()
        self.token_padding = foldable_padding(self.stack, getattr(self.encoder, "conv1", None))
        if self.token_padding is not None:
            self._fold_patch_embedding()
        self.head = model.head.for_deployment(self.stack.num_views).eval()
        self.num_views = self.stack.num_views
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def s0(self) -> int:
        return self.stack.s0

    def _fold_patch_embedding(self) -> None:
        conv = self.encoder.conv1
        weight, dtype = conv.weight.detach().float(), conv.weight.dtype
        with torch.no_grad():  # P(bias_v) (+ the conv's own bias, if any) per view: [V, width, grid, grid]
            tokens = F.conv2d(self.biases, weight, None if conv.bias is None else conv.bias.float(), conv.stride)
        scale = (255.0 * self.stack.std[0].reshape(1, 3, 1, 1)).float()
        self.register_buffer("patch_weight", (weight / scale).to(dtype))
        self.register_buffer("token_biases", tokens.to(dtype))
        del self.biases  # the 224-px constants are now folded into token_biases
        self.encoder.conv1 = nn.Identity()  # the encoder now starts from the token grid

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """What the encoder's body sees for all views, one batch: [B * V, ...]."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        if self.token_padding is None:
            views = self.stack.build(x / 255.0, self.biases)  # [B * V, 3, 224, 224]
            return views.half() if self.precision == "fp16" else views
        batch = images.shape[0]  # the graph's dynamic batch axis (a traced size, not a constant)
        views = torch.stack(self.stack.view_images(x), dim=1).flatten(0, 1)  # raw 0-255 [B * V, 3, S0, S0]
        w, (lo, hi) = self.patch_weight, self.token_padding
        p = w.shape[-1]
        views = views.to(w.dtype)
        token_pad = None
        if lo % p == 0 and hi % p == 0 and views.shape[-1] % p == 0:  # whole patches: pad the token grid
            token_pad = (lo // p, hi // p, lo // p, hi // p)
            grid = F.conv2d(views, w, stride=p)  # one convolution over all views
        elif lo == hi:
            grid = F.conv2d(views, w, stride=p, padding=lo)  # the convolution pads with zeros itself
        else:  # odd S0: asymmetric padding
            grid = F.conv2d(F.pad(views, (lo, hi, lo, hi)), w, stride=p)
        grid = grid.reshape(batch, self.num_views, *grid.shape[1:])
        if token_pad is not None:
            grid = F.pad(grid, token_pad)
        return (grid + self.token_biases).reshape(-1, *grid.shape[2:])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(self.encoder_input(images)).float()
        feats = F.normalize(feats, dim=-1).reshape(-1, self.num_views, feats.shape[-1])
        logits = self.head(feats).logits.float()
        return logits, torch.softmax(logits, dim=-1)
