"""One model for every method: views -> one encoder pass -> heads + fusion (DESIGN.md 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from dga.train.backbone import FrozenCLIP
from dga.train.views import ViewStack


@dataclass
class Outputs:
    logits: torch.Tensor  # [B, C] final class logits
    level_logits: list[torch.Tensor] = field(default_factory=list)  # DGA: [B, S_l] per level
    scores: torch.Tensor | None = None  # DVP: per-description scores [B, C, M'] (PRM counting)


class Head(nn.Module):
    """Turns unit view features [B, V, D] into Outputs; owns the method's loss."""

    def forward(self, feats: torch.Tensor) -> Outputs:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must define forward")

    def loss(self, out: Outputs, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.logits.float(), y)

    def for_deployment(self, num_views: int) -> Head:
        """The head export traces: the same formulas, constants folded where that is exact."""
        return self


class ReprogramModel(nn.Module):
    """Frozen CLIP + learnable prompts (ViewStack) + a Head. Only ``stack.programs`` trains."""

    def __init__(self, method: str, backbone: FrozenCLIP, stack: ViewStack, head: Head):
        super().__init__()
        self.method = method
        self.backbone = backbone
        self.stack = stack
        self.head = head

    def encode_views(self, x: torch.Tensor, generator: torch.Generator | None = None,
                     crops: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """x [B, 3, S0, S0] in [0, 1] -> unit features [B, V, D] from ONE encoder pass.

        ``crops``: training crop positions (ViewStack.draw_crops), drawn here when not given.
        """
        b = x.shape[0]
        feats = self.backbone.encode_image(self.stack(x, generator, crops)).float()
        return F.normalize(feats, dim=-1).view(b, self.stack.num_views, -1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                crops: list[torch.Tensor | None] | None = None) -> Outputs:
        return self.head(self.encode_views(x, generator, crops))

    def loss(self, out: Outputs, y: torch.Tensor) -> torch.Tensor:
        return self.head.loss(out, y)

    def learned_state(self) -> dict[str, torch.Tensor]:
        """Everything of this model that is not the backbone (what a bundle stores).

        A snapshot: on the CPU ``.cpu()`` would alias the live parameters, and the trainer's
        best-epoch state would silently follow later epochs.
        """
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()
                if not k.startswith("backbone.")}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.stack.parameters() if p.requires_grad]
