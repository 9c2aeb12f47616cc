"""Training memory: an estimate per image-view, and the micro-batch / checkpointing that fit a budget.

Only the image encoder's activations grow with the batch: CLIP is frozen, so its linear layers
keep nothing for the backward pass (their weights need no gradient), but the gradient still has
to travel through every block back to the prompted pixels. For a ViT with T tokens
((image_size / patch)^2 + 1), width W, H heads, MLP width M, L blocks and input side S, the
estimate counts fp32 numbers (4 bytes each) per image-view:

    block = 6*T*W + T*M + H*T*T    what one block keeps: both LayerNorm inputs (2TW), q, k, v (3TW),
                                   the attention output (TW), the MLP hidden layer (TM) and the
                                   attention matrix (H T^2; flash / memory-efficient kernels keep
                                   none, the plain one does)
    stem  = 3*S*S + 2*T*W          the prompted input image and the token embeddings
    plain          = stem + (L + 1) * block    every block, plus one block of backward workspace
    checkpointing  = stem + L*T*W + 2 * block  block inputs only; one block recomputed + workspace

A step of n images and V views needs ``fixed + 1.5 * n * V * per_view * 4`` bytes. The factor
1.5 is allocator slack: the tensors alive at the peak stay within ``per_view`` (checked against
what autograd keeps), but freed blocks the allocator holds for reuse (glibc's heap on the CPU,
the caching allocator on a GPU) raise the process's footprint above them. ``fixed`` is the CLIP
weights, the method's tensors, gradient and momentum of the prompts, and a constant
RUNTIME_OVERHEAD for the framework. It is deliberately conservative (the attention matrix, fp32
under autocast too); it covers ViT image encoders, the CLIP models this toolkit trains on.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from dga.errors import ConfigError

FLOAT_BYTES = 4
RUNTIME_OVERHEAD = 1 << 30  # 1 GiB: interpreter, torch libraries, allocator slack / CUDA context
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*$", re.IGNORECASE)


def parse_memory_size(text: str, option: str = "--max-memory") -> int:
    """'12GB' -> 12 * 10^9 bytes, '16GiB' -> 16 * 2^30 (B, kB, MB, GB, TB and KiB ... TiB)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigError(f"{option} {text!r} is not a memory size: write a number and a unit, e.g. 12GB or 16GiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{option} {text!r} must be more than 0 bytes")
    return size


def format_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**9 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class EncoderShape:
    """The numbers of a ViT image encoder the estimate needs."""

    tokens: int  # T, patches + class token
    width: int  # W
    heads: int  # H
    mlp: int  # M, hidden width of the MLP
    layers: int  # L, transformer blocks
    image_size: int  # S, input side in pixels


def encoder_shape(backbone) -> EncoderShape:
    """The shape of a FrozenCLIP's ViT image encoder; a one-line error for other encoders."""
    visual = backbone.clip.visual
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "grid_size"):
        raise ConfigError(f"the memory estimate covers ViT image encoders; {backbone.info.name} has a "
                          f"{type(visual).__name__}: set --micro-batch yourself instead of --max-memory")
    grid_h, grid_w = visual.grid_size
    return EncoderShape(tokens=grid_h * grid_w + 1, width=int(visual.transformer.width),
                        heads=int(blocks[0].attn.num_heads), mlp=int(blocks[0].mlp.c_fc.out_features),
                        layers=len(blocks), image_size=int(backbone.info.image_size))


def block_floats(s: EncoderShape) -> int:
    t, w = s.tokens, s.width
    return 6 * t * w + t * s.mlp + s.heads * t * t


def stem_floats(s: EncoderShape) -> int:
    return 3 * s.image_size**2 + 2 * s.tokens * s.width


def bytes_per_view(s: EncoderShape, checkpointing: bool) -> int:
    """Activation bytes one image-view adds to a training step (module docstring)."""
    if checkpointing:
        floats = stem_floats(s) + s.layers * s.tokens * s.width + 2 * block_floats(s)
    else:
        floats = stem_floats(s) + (s.layers + 1) * block_floats(s)
    return FLOAT_BYTES * floats


def fixed_bytes(model) -> int:
    """Memory that does not grow with the batch: CLIP weights, method tensors, prompt grad + momentum."""
    backbone = sum(p.numel() for p in model.backbone.parameters())
    learned = sum(t.numel() for t in model.learned_state().values())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    return FLOAT_BYTES * (backbone + learned + 2 * trainable) + RUNTIME_OVERHEAD


def image_bytes(s: EncoderShape, views: int, checkpointing: bool) -> int:
    """What one image of ``views`` views adds to a step: its activations with allocator slack (x 1.5)."""
    return views * bytes_per_view(s, checkpointing) * 3 // 2  # bytes_per_view is a multiple of 4: exact


def step_bytes(s: EncoderShape, views: int, images: int, checkpointing: bool, fixed: int) -> int:
    """Estimated peak of a training step that runs ``images`` images of ``views`` views at once."""
    return fixed + images * image_bytes(s, views, checkpointing)


@dataclass(frozen=True)
class MemoryPlan:
    """How a training step runs: images per forward/backward and gradient checkpointing."""

    micro_batch: int | None = None  # images per forward/backward; None = the whole batch at once
    grad_checkpointing: bool = False
    max_memory: int | None = None  # the budget the plan was chosen for (bytes), if any
    estimate_bytes: int | None = None  # estimated peak with this plan (ViT encoders), if known

    def chunk(self, batch: int) -> int:
        return min(batch, self.micro_batch or batch)

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        split = f"micro-batches of {self.micro_batch} images" if self.micro_batch else "whole batches"
        ckpt = "gradient checkpointing on" if self.grad_checkpointing else "gradient checkpointing off"
        est = f", estimated peak {format_bytes(self.estimate_bytes)}" if self.estimate_bytes else ""
        return f"{split}, {ckpt}{est}"


def plan_memory(s: EncoderShape, views: int, batch: int, fixed: int, budget: int,
                micro_batch: int | None = None, checkpointing: bool | None = None) -> MemoryPlan:
    """The plan that fits ``budget`` bytes: options given explicitly are kept, the others chosen.

    Checkpointing costs a second forward pass of every block, micro-batching costs nothing but
    smaller encoder batches, so: whole batches without checkpointing if they fit, else the
    largest micro-batch without it, else checkpointing with the largest micro-batch that fits.
    """
    choices = [checkpointing] if checkpointing is not None else [False, True]
    for ckpt in choices:
        fits = max(0, (budget - fixed) // image_bytes(s, views, ckpt))
        n = micro_batch if micro_batch else min(batch, fits)
        if 1 <= n <= fits:
            chunk = None if n >= batch else n
            return MemoryPlan(chunk, ckpt, budget, step_bytes(s, views, min(n, batch), ckpt, fixed))
    ckpt = choices[-1]
    n = micro_batch or 1
    need = step_bytes(s, views, n, ckpt, fixed)
    how = "with" if ckpt else "without"
    raise ConfigError(f"--max-memory {format_bytes(budget)} is below the estimated {format_bytes(need)} for "
                      f"{n} image(s) x {views} views {how} gradient checkpointing: raise --max-memory"
                      + (" or lower --micro-batch" if micro_batch and micro_batch > 1 else "")
                      + ("" if ckpt else " or allow --grad-checkpointing"))


def plan_for(model, batch: int, max_memory: int | None, micro_batch: int | None,
             checkpointing: bool | None) -> MemoryPlan:
    """The plan of a training run: chosen from ``max_memory`` if given, else the options as given."""
    if checkpointing:
        model.backbone.check_checkpointable()
    views, fixed = model.stack.num_views, fixed_bytes(model)
    if max_memory is not None:
        return plan_memory(encoder_shape(model.backbone), views, batch, fixed, max_memory, micro_batch,
                           checkpointing)
    try:
        shape = encoder_shape(model.backbone)
    except ConfigError:
        shape = None  # no estimate for other encoders; the run itself does not need one
    ckpt = bool(checkpointing)
    images = min(batch, micro_batch or batch)
    estimate = step_bytes(shape, views, images, ckpt, fixed) if shape else None
    return MemoryPlan(micro_batch if micro_batch and micro_batch < batch else None, ckpt, None, estimate)
