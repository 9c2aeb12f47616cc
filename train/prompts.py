"""The two prompt kinds of METHODS.md section 1: geometry, masks and how a frame is applied.

pad ("padding" / input-size reprogramming; AR, AttrVR, DVP, DGA):
    x' = Normalize(Pad(x) + sigmoid(program) * M),  x is S0 x S0 in [0, 1], M = 1 on the frame.
overlay (watermark; VP):
    x' = Normalize(x) + program * M,                x is 224 x 224, M = 1 on a 30-px border.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

PROMPT_KINDS = ("pad", "overlay")
OVERLAY_BORDER = 30


def pad_amounts(s0: int, size: int = 224) -> tuple[int, int]:
    """(left/top, right/bottom) zero padding that takes an S0 image to ``size``."""
    if not 0 < s0 <= size:
        raise ValueError(f"S0 must be in (0, {size}], got {s0}")
    return (size - s0 + 1) // 2, (size - s0) // 2


def pad_mask(s0: int, size: int = 224) -> torch.Tensor:
    """[1, size, size] mask: 1 on the padding frame, 0 where the image sits."""
    lo, _ = pad_amounts(s0, size)
    m = torch.ones(1, size, size)
    m[:, lo : lo + s0, lo : lo + s0] = 0
    return m


def overlay_mask(size: int = 224, border: int = OVERLAY_BORDER) -> torch.Tensor:
    """[1, size, size] mask: 1 on a ``border``-px frame, inner (size - 2*border)^2 left free."""
    m = torch.ones(1, size, size)
    m[:, border : size - border, border : size - border] = 0
    return m


def prompt_mask(kind: str, s0: int, size: int = 224) -> torch.Tensor:
    if kind == "pad":
        return pad_mask(s0, size)
    if kind == "overlay":
        return overlay_mask(size)
    raise ValueError(f"unknown prompt kind {kind!r}; expected one of {PROMPT_KINDS}")


def effective_parameters(kind: str, s0: int, size: int = 224) -> int:
    """Number of program entries that can influence the output (3 channels x frame pixels)."""
    return int(3 * prompt_mask(kind, s0, size).sum().item())


def prompt_frame(kind: str, program: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What a prompt adds: sigmoid(program) * M for pad, program * M for overlay.

    After training this is a constant, which is what export bakes into the graph.
    """
    return (torch.sigmoid(program) if kind == "pad" else program) * mask


def frame_bias(kind: str, frame: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """What is added after scaling pixels by 1/std: the frame and the mean folded into one constant.

    pad:     Normalize(Pad(x) + F) = Pad(x / std) + (F - mean) / std   (F = 0 where the image sits)
    overlay: Normalize(x) + F      = x / std + (F - mean / std)
    """
    return (frame - mean) / std if kind == "pad" else frame - mean / std


def place(kind: str, x_scaled: torch.Tensor, size: int = 224, s0: int | None = None) -> torch.Tensor:
    """Put scaled images [..., 3, S0, S0] into the encoder's frame: zero padding (pad) or as is."""
    if kind != "pad":
        return x_scaled
    lo, hi = pad_amounts(s0 if s0 is not None else x_scaled.shape[-1], size)
    return F.pad(x_scaled, (lo, hi, lo, hi))


def apply_frame(
    kind: str, x: torch.Tensor, frame: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size: int = 224,
    s0: int | None = None,
) -> torch.Tensor:
    """x [N, 3, S0, S0] in [0, 1], frame [N or 1, 3, size, size] -> normalised encoder input.

    Computed as place(x / std) + frame_bias: the same numbers as the formulas above, with one
    elementwise pass over the large tensor (what the exported graph runs). ``s0`` may be given
    as a plain int so tracing for export does not depend on a traced shape.
    """
    return place(kind, x / std, size, s0) + frame_bias(kind, frame, mean, std)
