"""Views: which crop of the S0 image each encoder input sees, and with which prompt.

Every method is a list of views (DESIGN.md section 3). A view crops a ``side x side`` box out of
the S0 x S0 image (side 0 = the whole image), resizes it back to S0 bilinearly, and adds the
frame of a prompt mixture (a weighted sum of raw programs: DGA's HKP averages programs before
the sigmoid). At inference the crop boxes are fixed; in training crops are drawn at random.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from dga.train.prompts import frame_bias, place, prompt_frame, prompt_mask

# Fixed crop positions at inference, in this order (METHODS.md 5.3).
CROP_POSITIONS = ("center", "top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class View:
    name: str
    mix: tuple[float, ...]  # weights over the raw programs
    side: int = 0  # crop side in S0 pixels; 0 = whole image
    box: tuple[int, int] | None = None  # (top, left) of the fixed inference crop

    def to_json(self) -> dict:
        d = asdict(self)
        d["mix"] = list(self.mix)
        d["box"] = list(self.box) if self.box is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> View:
        return cls(d["name"], tuple(d["mix"]), d["side"], tuple(d["box"]) if d["box"] is not None else None)


def fixed_box(position: str, s0: int, side: int) -> tuple[int, int]:
    """(top, left) of a ``side`` crop at one of CROP_POSITIONS inside an S0 image."""
    far = s0 - side
    return {
        "center": (far // 2, far // 2),
        "top-left": (0, 0),
        "top-right": (0, far),
        "bottom-left": (far, 0),
        "bottom-right": (far, far),
    }[position]


def crop_resize(x: torch.Tensor, top: int, left: int, side: int, s0: int | None = None) -> torch.Tensor:
    """Crop a side x side box of x [N, 3, S0, S0] and resize it back to S0 (bilinear)."""
    s0 = s0 if s0 is not None else x.shape[-1]
    crop = x[:, :, top : top + side, left : left + side]
    return F.interpolate(crop, size=(s0, s0), mode="bilinear", align_corners=False)


class ViewStack(nn.Module):
    """[B, 3, S0, S0] images in [0, 1] -> [B * V, 3, 224, 224] prompted encoder inputs.

    Holds the learnable programs; everything else (mask, mixture, mean/std) is derived from the
    configuration, so only ``programs`` is saved.
    """

    def __init__(
        self,
        kind: str,
        s0: int,
        views: list[View],
        programs: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: int = 224,
    ):
        super().__init__()
        n_prog = programs.shape[0]
        if any(len(v.mix) != n_prog for v in views):
            raise ValueError("every view's prompt mixture must have one weight per program")
        self.kind, self.s0, self.size, self.views = kind, s0, size, list(views)
        self.programs = nn.Parameter(programs.clone().float())
        self.register_buffer("mix", torch.tensor([v.mix for v in views], dtype=torch.float32), persistent=False)
        self.register_buffer("mask", prompt_mask(kind, s0, size), persistent=False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_views(self) -> int:
        return len(self.views)

    def frames(self) -> torch.Tensor:
        """[V, 3, size, size]: each view's prompt frame (constant once trained)."""
        mixed = torch.einsum("vp,pchw->vchw", self.mix, self.programs)
        return prompt_frame(self.kind, mixed, self.mask)

    def draw_crops(self, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor | None]:
        """Training crops of a batch: per view, (top, left) of each image's random crop [B, 2] (None: whole image).

        Drawn view after view, as one forward pass draws them; a batch split into micro-batches
        passes slices of these, so its crops (and the random stream after them) do not change.
        """
        return [torch.randint(0, self.s0 - v.side + 1, (batch, 2), generator=generator) if v.side else None
                for v in self.views]

    def view_images(self, x: torch.Tensor, generator: torch.Generator | None = None,
                    crops: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Per view, the [B, 3, S0, S0] image it sees (fixed crops in eval, random in training).

        ``crops`` (training only): positions from ``draw_crops``; drawn here when not given.
        """
        if self.training and crops is None:
            crops = self.draw_crops(x.shape[0], generator)
        out = []
        for i, v in enumerate(self.views):
            if v.side == 0:
                out.append(x)
            elif self.training:
                out.append(crops_at(x, crops[i], v.side))
            else:
                out.append(crop_resize(x, v.box[0], v.box[1], v.side, self.s0))
        return out

    def biases(self) -> torch.Tensor:
        """[V, 3, size, size]: frame and normalisation folded into one constant per view."""
        return frame_bias(self.kind, self.frames(), self.mean[0], self.std[0])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                crops: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        return self.build(x, self.biases(), generator, crops)

    def build(self, x: torch.Tensor, biases: torch.Tensor, generator: torch.Generator | None = None,
              crops: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """All views of x as one encoder batch [B * V, 3, size, size] (export passes baked biases).

        Pixels are scaled by 1/std once; crops, padding and the per-view constant follow as one
        stacked tensor, so the graph has a few large ops instead of a few per view.
        """
        views = self.view_images(x / self.std, generator, crops)
        stacked = place(self.kind, torch.stack(views, dim=1), self.size, self.s0)  # [B, V, 3, size, size]
        return (stacked + biases).flatten(0, 1)


def crops_at(x: torch.Tensor, pos: torch.Tensor, side: int) -> torch.Tensor:
    """Image i's side x side crop at pos[i] = (top, left), resized back to S0 (training-time views)."""
    return torch.cat([crop_resize(x[i : i + 1], int(top), int(left), side)
                      for i, (top, left) in enumerate(pos.tolist())])


def slice_crops(crops: list[torch.Tensor | None], lo: int, hi: int) -> list[torch.Tensor | None]:
    """The crops of images lo..hi-1 of a batch (a micro-batch)."""
    return [None if c is None else c[lo:hi] for c in crops]
