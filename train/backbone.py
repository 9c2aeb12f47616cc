"""The frozen open_clip backbone: one place decides how it is built, frozen and described.

A backbone is named by an open_clip model config (built-in, or one of this project's small
configs in ``model_configs/``) plus a weight source: a published pretrained tag (``openai``,
``laion2b_s34b_b88k``), ``shipped`` for the weights committed under ``weights/<model>/`` (the
small CLIP pretrained here, offline), a local weight file, or ``None`` for a seeded random
initialisation (tests). CLIP stays frozen: eval mode, no gradients, fp32 weights.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dga.errors import BackboneError, ConfigError

PROJECT_CONFIG_DIR = Path(__file__).parent / "model_configs"
SHIPPED_WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = "shipped"  # --pretrained tag of the weights committed in weights/<model>/ (offline)
_registered = False


def shipped_weights(name: str) -> Path | None:
    """The committed weight file of a project model (e.g. dga-shapes-vit-p32), or None."""
    path = SHIPPED_WEIGHTS_DIR / name / "weights.safetensors"
    return path if path.is_file() else None


def register_project_configs() -> list[str]:
    """Make the project's small model configs known to open_clip (idempotent)."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(PROJECT_CONFIG_DIR)
        _registered = True
    return sorted(p.stem for p in PROJECT_CONFIG_DIR.glob("*.json"))


@dataclass(frozen=True)
class BackboneInfo:
    """Everything a deployment needs to know about the backbone, JSON-able."""

    name: str
    pretrained: str | None  # tag, file path, or None (random init)
    weights: str  # "tag" (re-fetched by name) or "embedded" (stored in the bundle)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    logit_scale: float
    embed_dim: int

    def to_json(self) -> dict:
        return {**self.__dict__, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict) -> BackboneInfo:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


class FrozenCLIP(nn.Module):
    """A frozen open_clip model with the facts the methods need (mean/std, size, scale)."""

    def __init__(self, clip: nn.Module, info: BackboneInfo):
        super().__init__()
        self.clip = clip
        self.info = info
        clip.eval()
        for p in clip.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenCLIP:
        # The backbone never leaves eval mode: dropout/BN statistics must not change.
        super().train(False)
        return self

    @property
    def logit_scale(self) -> float:
        return self.info.logit_scale

    def check_checkpointable(self) -> None:
        """A one-line error unless open_clip can checkpoint this image encoder's blocks (ViT towers)."""
        if not hasattr(getattr(self.clip.visual, "transformer", None), "grad_checkpointing"):
            raise ConfigError(f"--grad-checkpointing needs a ViT image encoder; {self.info.name} has a "
                              f"{type(self.clip.visual).__name__}: use --micro-batch instead")

    def set_grad_checkpointing(self, enable: bool) -> None:
        """Recompute each encoder block in the backward pass instead of keeping its activations.

        open_clip's ViT runs ``torch.utils.checkpoint(..., use_reentrant=False)``: the gradient still
        reaches the prompted pixels although every weight is frozen, and equals the one without.
        """
        self.check_checkpointable()
        self.clip.visual.set_grad_checkpointing(bool(enable))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [N, 3, H, W] -> unnormalised features [N, D]."""
        return self.clip.encode_image(x)

    @torch.no_grad()
    def encode_text(self, sentences: list[str], batch_size: int = 256) -> torch.Tensor:
        """Sentences -> unit text embeddings [N, D] (fp32, on the backbone's device)."""
        import open_clip

        tokenizer = open_clip.get_tokenizer(self.info.name)
        device = next(self.clip.parameters()).device
        out = []
        for i in range(0, len(sentences), batch_size):
            tokens = tokenizer(sentences[i : i + batch_size]).to(device)
            out.append(self.clip.encode_text(tokens).float())
        feats = torch.cat(out) if out else torch.zeros(0, self.info.embed_dim, device=device)
        return nn.functional.normalize(feats, dim=-1)

    def weights_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.clip.state_dict().items()}


def _is_published_tag(name: str, pretrained: str) -> bool:
    import open_clip

    return pretrained in open_clip.list_pretrained_tags_by_model(name)


def load_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    seed: int = 0,
    state_dict: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> FrozenCLIP:
    """Build a frozen open_clip backbone.

    ``state_dict`` (from a bundle) overrides whatever ``pretrained`` names, so a bundle that
    embeds its backbone is rebuilt without touching the network or the original file.
    """
    import open_clip

    project = register_project_configs()
    if name not in open_clip.list_models():
        raise BackboneError(
            f"unknown backbone '{name}': use an open_clip model name such as ViT-B-16 "
            f"(open_clip.list_models()) or a project config ({', '.join(project)})"
        )
    if pretrained == SHIPPED and state_dict is None:
        path = shipped_weights(name)
        if path is None:
            have = ", ".join(p.name for p in sorted(SHIPPED_WEIGHTS_DIR.glob("*")) if shipped_weights(p.name))
            raise BackboneError(f"no shipped weights for {name}: '--pretrained {SHIPPED}' works for {have or 'none'}")
        pretrained = str(path)
    if state_dict is None and pretrained and not _is_published_tag(name, pretrained):
        if not os.path.isfile(pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise BackboneError(
                f"pretrained weights '{pretrained}' for {name} are neither a published tag "
                f"(known: {tags}) nor an existing file: pass a tag or a path to a weight file"
            )
    torch.manual_seed(seed)  # random-init backbones are reproducible from (name, seed)
    load_tag = None if state_dict is not None else pretrained
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)  # open_clip logs a warning for random init; we record it instead
    try:
        # weights_only: a local weight file is read as tensors, never unpickled into code
        clip = open_clip.create_model(name, pretrained=load_tag, device="cpu", weights_only=True)
    except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors for downloads
        if load_tag and _is_published_tag(name, load_tag):
            raise BackboneError(
                f"could not fetch the '{load_tag}' weights of {name} (no network?): run once "
                f"where the network is reachable (they are cached) or pass --pretrained with a "
                f"local weight file"
            ) from exc
        if isinstance(exc, pickle.UnpicklingError):
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            what = f" (it refers to {found.group(1)})" if found else ""
            raise BackboneError(
                f"could not load backbone {name}: the weight file '{load_tag}' holds more than tensors{what} and "
                f"dga never unpickles code from a file: save its state_dict alone, or as .safetensors"
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"could not load backbone {name} with weights '{load_tag}': {first}") from exc
    finally:
        log.setLevel(level)
    if state_dict is not None:
        missing, unexpected = clip.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise BackboneError(
                f"embedded backbone weights do not fit {name}: {len(missing)} missing and "
                f"{len(unexpected)} unexpected tensors (e.g. {(missing + unexpected)[:2]})"
            )
    clip = clip.float().to(device)
    pcfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    size = clip.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    embed_dim = int(clip.text_projection.shape[1]) if hasattr(clip, "text_projection") else 0
    if not embed_dim:
        with torch.no_grad():
            embed_dim = int(clip.encode_image(torch.zeros(1, 3, size, size, device=device)).shape[-1])
    info = BackboneInfo(
        name=name,
        pretrained=pretrained,
        weights="tag" if pretrained and _is_published_tag(name, pretrained) else "embedded",
        mean=tuple(float(v) for v in pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(float(v) for v in pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        image_size=size,
        logit_scale=float(clip.logit_scale.detach().exp().item()),
        embed_dim=embed_dim,
    )
    return FrozenCLIP(clip, info)
