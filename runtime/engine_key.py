"""Which TensorRT engine belongs to which ONNX file, GPU and TensorRT version.

A serialized TensorRT plan only runs on the TensorRT version and GPU it was built with, for the
exact ONNX graph, batch profile and precision it was built from. All of that goes into an
``EngineKey``; its digest names the files ``engines/<stem>.plan`` and ``engines/<stem>.json``
(the sidecar, holding the key fields and the plan's size and hash). Export writes these files and
the runtime checks them with the same code, so a stale or foreign engine is rebuilt or refused,
never loaded by accident. Standard library only: this module ships with the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dga.errors import EngineError
from dga.fsutil import atomic_write

KEY_FORMAT = 1
SIDECAR_FORMAT = 1
STEM_CHARS = 20
ENGINES_DIR = "engines"
PRECISIONS = ("fp16", "fp32")
DEFAULT_MAX_BATCH = 256
DEFAULT_OPT_BATCH = 64

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CC_RE = re.compile(r"^\d+\.\d+$")
# The fields that tie a plan to a machine and a graph; a difference in any of them makes an engine
# foreign (unusable here), while profile and precision only make it another variant.
_FOREIGN_FIELDS = ("onnx_sha256", "trt_version", "gpu_name", "compute_capability")


class EngineSpecError(EngineError, ValueError):
    """A batch profile or engine key field is out of range or malformed."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Profile:
    """The one TensorRT optimisation profile over the batch axis (kernels are tuned for ``opt``)."""

    min_batch: int
    opt_batch: int
    max_batch: int

    def __post_init__(self) -> None:
        values = (self.min_batch, self.opt_batch, self.max_batch)
        if not all(_is_int(v) for v in values) or not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineSpecError(
                f"batch profile min={self.min_batch!r}, opt={self.opt_batch!r}, max={self.max_batch!r} is "
                "invalid: use integers with 1 <= min <= opt <= max."
            )

    def to_dict(self) -> dict[str, int]:
        return {"min_batch": self.min_batch, "opt_batch": self.opt_batch, "max_batch": self.max_batch}

    @classmethod
    def from_dict(cls, data: object) -> Profile:
        if not isinstance(data, dict) or set(data) != {"min_batch", "opt_batch", "max_batch"}:
            raise EngineSpecError(
                f"batch profile {data!r} must have exactly the fields min_batch, opt_batch, max_batch."
            )
        return cls(data["min_batch"], data["opt_batch"], data["max_batch"])


def choose_profile(max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = DEFAULT_OPT_BATCH) -> Profile:
    """The default profile: min 1 (any partial last batch runs), opt clamped to ``max_batch``.

    Clamping lets ``--max-batch 16`` work without also passing ``--opt-batch``; a max or opt
    below 1 is still an error.
    """
    if _is_int(max_batch) and _is_int(opt_batch) and opt_batch > max_batch >= 1:
        opt_batch = max_batch
    return Profile(1, opt_batch, max_batch)


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized plan depends on; equal keys mean an interchangeable engine."""

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    profile: Profile
    precision: Literal["fp16", "fp32"]

    def __post_init__(self) -> None:
        if not isinstance(self.onnx_sha256, str) or not _SHA256_RE.match(self.onnx_sha256):
            raise EngineSpecError(f"onnx_sha256 {self.onnx_sha256!r} is not 64 lowercase hex digits.")
        for name in ("trt_version", "gpu_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EngineSpecError(f"engine key field {name} must be a non-empty string, got {value!r}.")
        if not isinstance(self.compute_capability, str) or not _CC_RE.match(self.compute_capability):
            raise EngineSpecError(
                f"compute capability {self.compute_capability!r} must look like '9.0' (major.minor)."
            )
        if not isinstance(self.profile, Profile):
            raise EngineSpecError(f"engine key profile must be a Profile, got {type(self.profile).__name__}.")
        if self.precision not in PRECISIONS:
            raise EngineSpecError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_format": KEY_FORMAT,
            "onnx_sha256": self.onnx_sha256,
            "trt_version": self.trt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "profile": self.profile.to_dict(),
            "precision": self.precision,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces, ASCII): the exact bytes the digest is taken over."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_dict(cls, data: object) -> EngineKey:
        expected = {"key_format", "onnx_sha256", "trt_version", "gpu_name", "compute_capability",
                    "profile", "precision"}
        if not isinstance(data, dict) or set(data) != expected:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise EngineSpecError(f"engine key must have exactly the fields {sorted(expected)}, got {got}.")
        if data["key_format"] != KEY_FORMAT:
            raise EngineSpecError(f"engine key format {data['key_format']!r} is not {KEY_FORMAT}.")
        return cls(
            onnx_sha256=data["onnx_sha256"],
            trt_version=data["trt_version"],
            gpu_name=data["gpu_name"],
            compute_capability=data["compute_capability"],
            profile=Profile.from_dict(data["profile"]),
            precision=data["precision"],
        )

    @classmethod
    def from_json(cls, text: str) -> EngineKey:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EngineSpecError(f"engine key is not valid JSON ({exc}).") from exc
        return cls.from_dict(data)

    def digest(self) -> str:
        """Full sha256 hex digest of ``to_json()``."""
        return hashlib.sha256(self.to_json().encode("ascii")).hexdigest()

    def stem(self) -> str:
        """File name stem: the first 20 hex digits (80 bits) of the digest."""
        return self.digest()[:STEM_CHARS]

    def differences(self, other: EngineKey) -> list[str]:
        """Names of the fields in which ``other`` differs from this key."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if mine[name] != theirs[name]]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in chunks (ONNX files reach hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def engine_paths(package_dir: str | os.PathLike[str], key: EngineKey) -> tuple[Path, Path]:
    """``(engines/<stem>.plan, engines/<stem>.json)`` inside the deployment package."""
    engines = Path(package_dir) / ENGINES_DIR
    stem = key.stem()
    return engines / f"{stem}.plan", engines / f"{stem}.json"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """A reader (or a crashed writer) sees the old file or the complete new one, never half a plan."""
    atomic_write(path, data)


@dataclass(frozen=True)
class Sidecar:
    """The parsed ``engines/<stem>.json`` next to a plan."""

    key: EngineKey
    digest: str
    plan_bytes: int
    plan_sha256: str
    built_at: str = ""


def write_sidecar(sidecar_path: str | os.PathLike[str], key: EngineKey, plan: bytes | memoryview) -> None:
    """Record the key fields and the plan's size and hash (written after the plan, atomically)."""
    view = memoryview(plan)
    record = {
        "sidecar_format": SIDECAR_FORMAT,
        "digest": key.digest(),
        "key": key.to_dict(),
        "plan_bytes": view.nbytes,
        "plan_sha256": hashlib.sha256(view).hexdigest(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(sidecar_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("ascii"))


def read_sidecar(sidecar_path: str | os.PathLike[str]) -> Sidecar:
    """Parse a sidecar, raising ``EngineSpecError`` for anything truncated, malformed or inconsistent."""
    path = Path(sidecar_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EngineSpecError(f"engine sidecar {path} cannot be read as JSON ({exc}).") from exc
    if not isinstance(data, dict) or data.get("sidecar_format") != SIDECAR_FORMAT:
        raise EngineSpecError(f"engine sidecar {path} is not a format-{SIDECAR_FORMAT} sidecar.")
    key = EngineKey.from_dict(data.get("key"))
    digest, size, plan_hash = data.get("digest"), data.get("plan_bytes"), data.get("plan_sha256")
    if digest != key.digest():
        raise EngineSpecError(f"engine sidecar {path} records a digest that does not match its key fields.")
    if not _is_int(size) or size <= 0 or not isinstance(plan_hash, str) or not _SHA256_RE.match(plan_hash):
        raise EngineSpecError(f"engine sidecar {path} has no valid plan size and hash.")
    return Sidecar(key=key, digest=digest, plan_bytes=size, plan_sha256=plan_hash,
                   built_at=str(data.get("built_at", "")))


@dataclass(frozen=True)
class Decision:
    """What to do with the engine slot for a key: ``hit`` (use it), ``miss`` (build), ``stale`` (rebuild)."""

    status: Literal["hit", "miss", "stale"]
    plan_path: Path
    sidecar_path: Path
    reason: str = field(default="")


def check_engine(package_dir: str | os.PathLike[str], key: EngineKey, verify_plan: bool = False) -> Decision:
    """Decide whether ``engines/<stem>.plan`` is exactly the engine for ``key``.

    The plan's size is always compared with the sidecar (a truncated copy is stale); its sha256
    only with ``verify_plan`` (it reads the whole plan).
    """
    plan, sidecar = engine_paths(package_dir, key)

    def decide(status: Literal["hit", "miss", "stale"], reason: str) -> Decision:
        return Decision(status, plan, sidecar, reason)

    has_plan, has_sidecar = plan.is_file(), sidecar.is_file()
    if not has_plan and not has_sidecar:
        return decide("miss", f"no engine {plan.name} has been built for this key")
    if not has_sidecar:
        return decide("stale", f"{plan.name} has no sidecar {sidecar.name}, so its origin is unknown")
    if not has_plan:
        return decide("stale", f"sidecar {sidecar.name} exists but its plan {plan.name} is missing")
    try:
        record = read_sidecar(sidecar)
    except EngineSpecError as exc:
        return decide("stale", str(exc).rstrip("."))
    if record.key != key:
        diff = ", ".join(key.differences(record.key))
        return decide("stale", f"sidecar {sidecar.name} records a different {diff} than this build")
    size = plan.stat().st_size
    if size != record.plan_bytes:
        return decide("stale", f"{plan.name} has {size} bytes but its sidecar records {record.plan_bytes}")
    if verify_plan and file_sha256(plan) != record.plan_sha256:
        return decide("stale", f"{plan.name} does not match the sha256 recorded in its sidecar")
    return decide("hit", f"{plan.name} was built for this ONNX file, GPU, TensorRT version and profile")


@dataclass(frozen=True)
class ForeignEngine:
    """An engine in ``engines/`` built for another ONNX file, GPU or TensorRT version."""

    plan_path: Path
    sidecar_path: Path
    key: EngineKey
    mismatched: tuple[str, ...]

    def message(self) -> str:
        """One sentence for the user naming what the engine was built for and what to do."""
        k = self.key
        return (
            f"engine {self.plan_path.name} was built for GPU {k.gpu_name} (compute capability "
            f"{k.compute_capability}) with TensorRT {k.trt_version} from ONNX sha256 {k.onnx_sha256[:12]}, "
            f"which differs here in {', '.join(self.mismatched)}; rebuild with dga-export --engine."
        )


def list_sidecars(package_dir: str | os.PathLike[str]) -> list[Path]:
    """Sidecar files in ``engines/``, sorted (the timing cache and build logs are not sidecars)."""
    engines = Path(package_dir) / ENGINES_DIR
    if not engines.is_dir():
        return []
    return sorted(p for p in engines.glob("*.json") if p.is_file() and not p.name.startswith("."))


def find_foreign(package_dir: str | os.PathLike[str], key: EngineKey) -> list[ForeignEngine]:
    """Engines whose readable sidecar names another ONNX hash, GPU, compute capability or TensorRT.

    Engines that differ only in profile or precision are variants, not foreign; unreadable
    sidecars are left to ``check_engine``, which reports the one at this key's stem as stale.
    """
    found = []
    for sidecar in list_sidecars(package_dir):
        try:
            record = read_sidecar(sidecar)
        except EngineSpecError:
            continue
        mismatched = tuple(f for f in _FOREIGN_FIELDS if getattr(record.key, f) != getattr(key, f))
        if mismatched:
            found.append(ForeignEngine(sidecar.with_suffix(".plan"), sidecar, record.key, mismatched))
    return found
