"""An export-friendly drop-in for the encoder's nn.MultiheadAttention (same weights, same numbers).

torch traces nn.MultiheadAttention through its sequence-first functional form, so the graph
transposes every [N, L, E] activation to [L, N, E] and back and splits q, k, v with a 5-D
transpose; on ONNX Runtime's CPU EP those copies cost ~10 % of the run. This module keeps the
batch-first layout end to end: one in-projection, one head permute, softmax(q k^T / sqrt(d)) v,
one out-projection, a pattern TensorRT and ONNX Runtime both recognise. In a half-precision
encoder the softmax is computed in fp32 (cast in, cast back), as DESIGN.md 5 asks.

When the module runs in torch (``sdpa=True``: the torch runners and benchmarks), the same
attention goes through ``torch.nn.functional.scaled_dot_product_attention`` instead, torch's fused
kernels (flash / memory-efficient on a GPU, a fused CPU kernel), which never materialise the
L x L score matrix and accumulate the softmax in fp32. While the module is being exported
(torch.export / the dynamo ONNX exporter, or the TorchScript exporter) the explicit form is
always used, so the exported graph is the same whatever ``sdpa`` says.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def exporting() -> bool:
    """Whether torch is capturing the module for export (dynamo or TorchScript), not running it."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting():
        return True
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting())


def supported(mha: nn.MultiheadAttention) -> bool:
    return mha._qkv_same_embed_dim and mha.in_proj_bias is not None and mha.bias_k is None and not mha.add_zero_attn


class ExportAttention(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention, sdpa: bool = False):
        super().__init__()
        self.sdpa = sdpa  # torch's fused attention kernel when run in torch (never in an export)
        if not supported(mha):
            raise ValueError("ExportAttention covers self-attention with a packed, biased in-projection only")
        self.heads, self.batch_first = mha.num_heads, mha.batch_first
        e = mha.embed_dim
        self.in_proj = nn.Linear(e, 3 * e).to(mha.in_proj_weight.dtype)
        self.in_proj.weight.data.copy_(mha.in_proj_weight.data)
        self.in_proj.bias.data.copy_(mha.in_proj_bias.data)
        self.out_proj = mha.out_proj

    def forward(self, query: torch.Tensor, key=None, value=None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        # Self-attention only (the image tower): key and value are the query, as open_clip passes them.
        x = query if self.batch_first else query.transpose(0, 1)
        n, length, e = x.shape
        d = e // self.heads
        q, k, v = self.in_proj(x).reshape(n, length, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa and not exporting():
            out = self._fused(q, k, v, attn_mask).transpose(1, 2).reshape(n, length, e)
            out = self.out_proj(out)
            return (out if self.batch_first else out.transpose(0, 1)), None
        # The two matmuls run in the encoder's precision; the softmax always runs in fp32 (DESIGN.md 5:
        # in the fp16 graph this writes Cast nodes around it; in an fp32 module both casts are no-ops).
        scores = ((q * d**-0.5) @ k.transpose(-1, -2)).float()
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # nn.MultiheadAttention: True = masked
            scores = scores.masked_fill(attn_mask, float("-inf"))
        elif attn_mask is not None:  # a float mask is added
            scores = scores + attn_mask.float()
        weights = torch.softmax(scores, dim=-1).to(v.dtype)
        out = (weights @ v).transpose(1, 2).reshape(n, length, e)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None

    @staticmethod
    def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        # scaled_dot_product_attention's boolean mask means "may attend", nn.MultiheadAttention's "masked".
        if attn_mask is not None:
            attn_mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def export_friendly(module: nn.Module, sdpa: bool = False) -> int:
    """Replace every supported nn.MultiheadAttention under module in place (others stay); returns how many.

    ``sdpa``: the replacements run torch's fused attention kernel in torch (see the module doc)."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.MultiheadAttention) and supported(child):
            setattr(module, name, ExportAttention(child, sdpa))
            count += 1
        else:
            count += export_friendly(child, sdpa)
    return count

