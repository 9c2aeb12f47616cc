"""Hyper-parameters with METHODS.md defaults. One flat record per concern, JSON round-trippable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from dga.errors import ConfigError

DEFAULT_TEMPLATE = "This is a photo of a {}."


@dataclass
class MethodConfig:
    """Options of the reprogramming methods; each method reads the ones it uses."""

    s0: int = 192  # image side inside the 224 padding frame (pad prompts)
    template: str = DEFAULT_TEMPLATE
    m: int = 20  # descriptions sampled per class (per cause for DVP-cse)
    min_chars: int = 20  # shorter descriptions are dropped before sampling
    topk: int = 3  # AttrVR top-k mean and DVP PRM top-k
    alpha: float = 0.5  # AttrVR DesAttr weight
    prompts: int = 3  # DVP: number of decoupled prompts K
    levels: int = 2  # DGA: hierarchy levels L (default level sizes from C)
    level_sizes: list[int] | None = None  # DGA: explicit level sizes, finest first
    scales: int = 2  # DGA: crop scales E
    crop_step: int = 32  # DGA: Delta, crop side S_e = S0 - Delta * e
    crops: int = 2  # DGA: J crops per scale (<= 5 at inference)
    h0: float = 1.2  # DGA: UPF entropy threshold (nats)
    lam: float = 0.7  # DGA: SG weight lambda
    hkp: bool = True  # DGA ablation switches
    sg: bool = True
    upf: bool = True
    vg: bool = True

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> MethodConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> MethodConfig:
        checks = [
            (0 < self.s0 <= 224, f"--s0 {self.s0} must be in 1..224"),
            (self.m >= 1, f"--m {self.m} must be at least 1"),
            (self.topk >= 1, f"--topk {self.topk} must be at least 1"),
            (0.0 <= self.alpha <= 1.0, f"--alpha {self.alpha} must be in [0, 1]"),
            (self.prompts >= 1, f"--prompts {self.prompts} must be at least 1"),
            (self.levels >= 0, f"--levels {self.levels} must be 0 or more"),
            (self.scales >= 0, f"--scales {self.scales} must be 0 or more"),
            (1 <= self.crops <= 5, f"--crops {self.crops} must be in 1..5 (fixed positions at inference)"),
            (self.s0 - self.crop_step * self.scales > 0,
             f"--crop-step {self.crop_step} x --scales {self.scales} leaves no crop inside S0 = {self.s0}"),
            (0.0 <= self.lam <= 1.0, f"--lam {self.lam} must be in [0, 1]"),
            (self.h0 > 0, f"--h0 {self.h0} must be positive"),
            ("{}" in self.template, f"--template {self.template!r} must contain {{}} for the class name"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self


@dataclass
class TrainConfig:
    """Optimisation schedule (METHODS.md section 0)."""

    epochs: int = 200
    batch_size: int = 64
    lr: float = 40.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 1
    workers: int = 0
    device: str = "auto"
    amp: bool = True  # autocast on CUDA only
    crop_scale: float = 0.08  # RandomResizedCrop's smallest area fraction (torchvision's default)
    # Memory (train/memory.py): how a step runs, not what it computes, so not part of the
    # settings a resumed run must share (MEMORY_OPTIONS): an interrupted run may resume with less.
    micro_batch: int | None = None  # images per forward/backward; None = the whole batch
    grad_checkpointing: bool | None = None  # None: off, or chosen from max_memory
    max_memory: int | None = None  # bytes; chooses what of the two above is not given
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def validate(self) -> TrainConfig:
        if self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr} must be positive")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"--crop-scale {self.crop_scale} must be in (0, 1]")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise ConfigError(f"--micro-batch {self.micro_batch} must be in 1..{self.batch_size} "
                              f"(images per forward pass, at most --batch-size)")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError(f"--max-memory {self.max_memory} must be more than 0 bytes")
        return self

    def settings(self) -> dict:
        """The options that decide what is computed (to_json without MEMORY_OPTIONS)."""
        return {k: v for k, v in self.to_json().items() if k not in MEMORY_OPTIONS}


MEMORY_OPTIONS = ("micro_batch", "grad_checkpointing", "max_memory")
