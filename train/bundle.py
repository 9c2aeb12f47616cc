"""The model bundle: ``<name>.dga/`` = manifest.json + tensors.safetensors (+ metrics, plots).

Written atomically (a hidden temporary directory renamed into place); loading checks
everything and raises one BundleError sentence naming what is wrong; it never half-loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import dga
from dga.errors import BackboneError, BundleError, ConfigError
from dga.train.backbone import BackboneInfo, FrozenCLIP, load_backbone
from dga.train.methods import assemble, get_method
from dga.train.model import ReprogramModel
from dga.train.trainer import load_learned_state

FORMAT = "dga-bundle"
VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
_SPLIT_KEYS = ("hierarchy", "sentences")  # stored in their own manifest sections


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; an existing one is replaced only after success."""
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
    try:
        os.replace(tmp, out)
    except OSError:
        if backup is not None:
            os.replace(backup, out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def writable_tmp_dir(out: Path) -> Path:
    parent = out.resolve().parent
    if not parent.is_dir():
        raise BundleError(f"cannot write {out}: its folder {parent} does not exist; create it first")
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise BundleError(f"cannot write {out}: {exc.strerror} in {parent}; choose a writable --out") from exc
    return tmp


def save_bundle(out: str | os.PathLike, model: ReprogramModel, cfg: dict, classnames: list[str],
                training: dict, extra_files: dict[str, Path | bytes] | None = None) -> Path:
    out = Path(out)
    tmp = writable_tmp_dir(out)
    try:
        info: BackboneInfo = model.backbone.info
        tensors = {f"model.{k}": v for k, v in model.learned_state().items()}
        if info.weights == "embedded":  # random or custom weights: the bundle must carry them
            tensors.update({f"backbone.{k}": v.cpu() for k, v in model.backbone.weights_state().items()})
        save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT, "version": str(VERSION)})
        os.chmod(tmp / TENSORS, 0o644)  # safetensors writes 0600; a bundle is meant to be shared
        spec = get_method(cfg["method"])
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dga_version": dga.__version__,
            "method": {"name": cfg["method"], "summary": spec.summary,
                       "config": {k: v for k, v in cfg.items() if k not in _SPLIT_KEYS}},
            "backbone": info.to_json(),
            "input": {"s0": cfg["s0"], "prompt": spec.prompt_kind, "image_size": info.image_size,
                      "layout": "uint8 [B, S0, S0, 3] RGB, shorter side resized to S0 (bicubic), centre crop"},
            "classnames": list(classnames),
            "hierarchy": cfg.get("hierarchy"),
            "views": [v.to_json() for v in model.stack.views],
            "heads": {"kind": type(model.head).__name__, "sentences": cfg.get("sentences")},
            "training": training,
            "tensors": {"file": TENSORS, "sha256": sha256_file(tmp / TENSORS),
                        "shapes": {k: list(v.shape) for k, v in tensors.items()}},
        }
        for name, content in (extra_files or {}).items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                shutil.copyfile(content, dest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class Bundle:
    path: Path
    manifest: dict
    cfg: dict
    model: ReprogramModel

    @property
    def classnames(self) -> list[str]:
        return self.manifest["classnames"]


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir() or not mf.is_file():
        raise BundleError(f"no model bundle at {path}: expected a directory with {MANIFEST} (made by dga-train --out)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf} is not valid JSON ({exc}); the bundle is damaged: retrain or restore it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mf} is not a dga model bundle manifest (format {FORMAT!r} expected)")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{path} is bundle format version {manifest.get('version')}; this dga "
                          f"{dga.__version__} reads version {VERSION}: use a matching dga release")
    missing = [k for k in ("method", "backbone", "input", "classnames", "views", "tensors") if k not in manifest]
    if missing:
        raise BundleError(f"{mf} lacks the section(s) {', '.join(missing)}; the bundle is damaged: retrain it")
    return manifest


def load_tensors(path: Path, manifest: dict) -> dict[str, torch.Tensor]:
    tf = path / manifest["tensors"].get("file", TENSORS)
    if not tf.is_file():
        raise BundleError(f"{tf} is missing; the bundle is incomplete: copy the whole {path.name} directory")
    if sha256_file(tf) != manifest["tensors"].get("sha256"):
        raise BundleError(f"{tf} does not match the sha256 in its manifest (truncated or modified): "
                          f"restore the bundle from its source")
    try:
        tensors = load_file(str(tf))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{tf} cannot be read as safetensors ({exc}): restore the bundle") from exc
    shapes = manifest["tensors"].get("shapes", {})
    for name, shape in shapes.items():
        if name not in tensors:
            raise BundleError(f"{tf} lacks the tensor '{name}' named in the manifest: the bundle is damaged")
        if list(tensors[name].shape) != list(shape):
            raise BundleError(f"tensor '{name}' in {tf} has shape {list(tensors[name].shape)}, "
                              f"the manifest says {shape}: the bundle is damaged")
    return tensors


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    manifest = read_manifest(path)
    tensors = load_tensors(path, manifest)
    cfg = {**manifest["method"]["config"], "hierarchy": manifest.get("hierarchy"),
           "sentences": (manifest.get("heads") or {}).get("sentences")}
    bb = manifest["backbone"]
    embedded = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    if bb.get("weights") == "embedded" and not embedded:
        raise BundleError(f"{path} says its backbone weights are embedded but holds none: the bundle is damaged")
    try:
        backbone: FrozenCLIP = load_backbone(bb["name"], bb.get("pretrained"), state_dict=embedded or None)
    except BackboneError as exc:
        raise BundleError(f"cannot rebuild the backbone of {path}: {exc}") from exc
    learned = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model = assemble(cfg, learned, backbone)
        load_learned_state(model, learned)
    except (ConfigError, KeyError, ValueError, RuntimeError) as exc:
        raise BundleError(f"the tensors of {path} do not fit its configuration ({exc}): the bundle is damaged") from exc
    if len(manifest["classnames"]) != cfg.get("num_classes"):
        raise BundleError(f"{path} names {len(manifest['classnames'])} classes but was trained on "
                          f"{cfg.get('num_classes')}: the manifest is damaged")
    model.eval()
    return Bundle(path, manifest, cfg, model.to(device))
