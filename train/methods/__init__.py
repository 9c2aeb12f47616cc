"""Method registry: a method is a name mapped to a MethodSpec (timm-style), not an if-chain.

Every method is views + heads + fusion (DESIGN.md 3). ``prepare`` computes what depends on
data (text heads, hierarchy, clusters) once before training; ``assemble`` rebuilds the model
from a configuration dict and tensors alone, which is all a bundle holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from dga.errors import ConfigError
from dga.train.backbone import FrozenCLIP
from dga.train.config import MethodConfig
from dga.train.model import Head, ReprogramModel
from dga.train.views import View, ViewStack

# Which description files a method reads: role names of PrepareContext.descriptions.
NO_DESCRIPTIONS: tuple[str, ...] = ()


@dataclass
class PrepareContext:
    backbone: FrozenCLIP
    classnames: list[str]
    config: MethodConfig
    descriptions: dict[str, dict[str, list[str]]]  # role -> {class name: sentences}, validated
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # eval-transform batches
    seed: int = 1
    notes: list[str] = field(default_factory=list)  # decisions worth telling the user


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    prompt_kind: str
    description_roles: Callable[[MethodConfig], tuple[str, ...]]  # required description files
    prepare: Callable[[PrepareContext], tuple[dict, dict[str, torch.Tensor]]]
    views: Callable[[dict], list[View]]
    build_head: Callable[[dict, dict[str, torch.Tensor], float], Head]
    on_train_start: Callable | None = None  # (model, batches, device) -> None
    on_epoch_end: Callable | None = None


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    return METHODS[name]


def zero_programs(n: int, size: int = 224) -> torch.Tensor:
    """Programs start at zero: a mid-grey (0.5) frame for pad prompts, nothing for overlay."""
    return torch.zeros(n, 3, size, size)


def assemble(cfg: dict, tensors: dict[str, torch.Tensor], backbone: FrozenCLIP) -> ReprogramModel:
    """Rebuild a model from its configuration and learned tensors (no data, no randomness)."""
    spec = get_method(cfg["method"])
    views = spec.views(cfg)
    head_tensors = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
    info = backbone.info
    stack = ViewStack(spec.prompt_kind, cfg["s0"], views, tensors["stack.programs"], info.mean, info.std,
                      size=info.image_size)
    head = spec.build_head(cfg, head_tensors, info.logit_scale)
    return ReprogramModel(spec.name, backbone, stack, head)


def create(ctx: PrepareContext, method: str) -> tuple[ReprogramModel, dict]:
    """prepare + assemble with fresh prompts; returns the model and its configuration dict."""
    spec = get_method(method)
    ctx.config.validate()
    cfg_extra, tensors = spec.prepare(ctx)
    cfg = {"method": spec.name, **ctx.config.to_json(), "num_classes": len(ctx.classnames), **cfg_extra}
    model = assemble(cfg, tensors, ctx.backbone)
    return model, cfg


# Register the built-in methods (import for side effects, in the papers' order).
from dga.train.methods import baselines as _baselines  # noqa: E402,F401
from dga.train.methods import dga as _dga  # noqa: E402,F401
from dga.train.methods import dvp as _dvp  # noqa: E402,F401
