"""The resume state of an interrupted training run, stored without pickle.

One safetensors file: its tensors are the tensors of the state (prompts, the best epoch's
snapshot, SGD momentum buffers); everything else (epoch, schedule and scaler counters, metrics,
the fingerprint of the settings) is one JSON document in the file's metadata, with each tensor
replaced by ``{"$tensor": name}``. Reading it parses a JSON header and raw numbers, so no file
in ``OUT.work/`` can run code, unlike ``torch.load(..., weights_only=False)`` of a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from dga.errors import ConfigError
from dga.fsutil import atomic_write

FORMAT = "dga-resume-state"
VERSION = 1
_TENSOR = "$tensor"  # a leaf that is a tensor of the file
_INT_KEYS = "$int-keys"  # a dict with integer keys (torch optimizer state: parameter index -> buffers)


def _encode(obj, path: str, tensors: dict[str, torch.Tensor]):
    """JSON-able tree of ``obj``; tensors move into ``tensors`` under their path in the tree."""
    if isinstance(obj, torch.Tensor):
        if path in tensors:
            raise TypeError(f"two tensors of the resume state have the path {path!r}")
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            if _TENSOR in obj or _INT_KEYS in obj:
                raise TypeError(f"the key names {_TENSOR!r} and {_INT_KEYS!r} are reserved (at {path!r})")
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {_INT_KEYS: {str(k): _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}}
        raise TypeError(f"a dict of the resume state mixes key types at {path!r}")
    if isinstance(obj, list | tuple):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"a resume state holds tensors, numbers, strings and containers; {type(obj).__name__} "
                    f"at {path!r} is none of them")


def _decode(tree, tensors: dict[str, torch.Tensor]):
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        if set(tree) == {_INT_KEYS}:
            return {int(k): _decode(v, tensors) for k, v in tree[_INT_KEYS].items()}
        return {k: _decode(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    return tree


def as_stored(obj):
    """What ``load_state`` gives back for ``obj`` (tuples come back as lists), to compare with."""
    tensors: dict[str, torch.Tensor] = {}
    return _decode(json.loads(json.dumps(_encode(obj, "", tensors))), tensors)


def save_state(path: Path, state: dict) -> None:
    """Write ``state`` (tensors, primitives, lists and dicts of them) atomically to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    metadata = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(tree)}
    atomic_write(path, save(tensors, metadata=metadata))


def load_state(path: Path) -> dict:
    """The state ``save_state`` wrote; anything else is refused with one sentence naming the file."""
    fix = "drop --resume to train from the start (the work folder is then replaced)"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path} cannot be read as a dga resume state ({reason}): {fix}") from exc
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{path} is a safetensors file but not a dga resume state: {fix}")
    if metadata.get("version") != str(VERSION):
        raise ConfigError(f"{path} is resume-state version {metadata.get('version')}; this dga reads version "
                          f"{VERSION}: {fix}")
    try:
        tree = json.loads(metadata.get("state", ""))
        state = _decode(tree, tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} holds a damaged resume state ({type(exc).__name__}: {exc}): {fix}") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds a damaged resume state (not a mapping): {fix}")
    return state
