"""A damaged or foreign bundle is refused with one BundleError sentence naming the problem.

One bundle (an untrained DGA model with a label hierarchy on the tiny random backbone, so its
backbone weights are embedded) is written once per module; each test damages its own copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dga.errors import BundleError
from dga.train.bundle import MANIFEST, TENSORS, load_bundle, save_bundle
from dga.train.config import MethodConfig
from dga.train.data.imagefolder import load_imagefolder
from dga.train.data.images import eval_transform
from dga.train.methods import PrepareContext, create
from dga.train.trainer import make_loader


@pytest.fixture(scope="module")
def made(shapes_data, backbone, tmp_path_factory):
    """(bundle path, model, cfg, classnames) of a freshly created (untrained) DGA model."""
    root, _, _ = shapes_data
    splits = load_imagefolder(root)
    cfg = MethodConfig(level_sizes=[3])

    def batches():
        return make_loader(splits.train[::4], eval_transform(cfg.s0), 32, False, 0, 0)

    ctx = PrepareContext(backbone, splits.classnames, cfg, {}, batches, seed=0)
    torch.manual_seed(0)
    model, mcfg = create(ctx, "dga")
    with torch.no_grad():
        model.stack.programs.normal_()  # something other than zeros, so reloading is checked
    out = tmp_path_factory.mktemp("bundles") / "m.dga"
    save_bundle(out, model, mcfg, splits.classnames, {"note": "first"})
    return out, model, mcfg, splits.classnames


@pytest.fixture
def bundle(made, tmp_path) -> Path:
    """A private copy of the module's bundle."""
    dst = tmp_path / "copy.dga"
    shutil.copytree(made[0], dst)
    return dst


def read_manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def write_manifest(path: Path, manifest: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))


def rewrite_tensors(path: Path, drop: callable) -> list[str]:
    """Rewrite tensors.safetensors without the tensors ``drop(name)`` selects; fix the sha256."""
    tensors = load_file(str(path / TENSORS))
    dropped = sorted(k for k in tensors if drop(k))
    save_file({k: v for k, v in tensors.items() if k not in dropped}, str(path / TENSORS))
    manifest = read_manifest(path)
    manifest["tensors"]["sha256"] = hashlib.sha256((path / TENSORS).read_bytes()).hexdigest()
    write_manifest(path, manifest)
    return dropped


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    msg = str(info.value)
    assert "\n" not in msg, "one sentence, one line"
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


def test_the_intact_copy_loads(bundle, made):
    """The baseline every damage below departs from: the copy loads and reproduces the model."""
    _, model, _, classnames = made
    b = load_bundle(bundle)
    assert b.classnames == classnames
    x = torch.rand(2, 3, 192, 192)
    with torch.no_grad():
        assert torch.equal(b.model(x).logits, model.eval()(x).logits)


def test_path_missing(tmp_path):
    refused(tmp_path / "nowhere.dga", "no model bundle at", "nowhere.dga", "manifest.json")


def test_path_is_a_file(tmp_path):
    f = tmp_path / "file.dga"
    f.write_text("x")
    refused(f, "no model bundle at", "file.dga")


def test_manifest_missing(bundle):
    (bundle / MANIFEST).unlink()
    refused(bundle, "no model bundle at", str(bundle), "manifest.json")


def test_manifest_not_json(bundle):
    (bundle / MANIFEST).write_text('{"format": "dga-bundle", ')
    refused(bundle, "manifest.json", "is not valid JSON")


def test_manifest_not_utf8(bundle):
    (bundle / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    refused(bundle, "manifest.json", "is not valid JSON")


def test_other_format(bundle):
    manifest = read_manifest(bundle)
    manifest["format"] = "onnx-package"
    write_manifest(bundle, manifest)
    refused(bundle, "is not a dga model bundle manifest", "dga-bundle")


def test_manifest_is_a_list(bundle):
    (bundle / MANIFEST).write_text("[1, 2, 3]")
    refused(bundle, "is not a dga model bundle manifest")


def test_version_99(bundle):
    manifest = read_manifest(bundle)
    manifest["version"] = 99
    write_manifest(bundle, manifest)
    refused(bundle, "version 99", "reads version 1")


def test_section_missing(bundle):
    manifest = read_manifest(bundle)
    del manifest["views"]
    write_manifest(bundle, manifest)
    refused(bundle, "lacks the section(s) views")


def test_tensors_file_missing(bundle):
    (bundle / TENSORS).unlink()
    refused(bundle, "tensors.safetensors is missing", "copy the whole copy.dga directory")


def test_tensors_file_truncated(bundle):
    data = (bundle / TENSORS).read_bytes()
    (bundle / TENSORS).write_bytes(data[: len(data) // 2])
    refused(bundle, "tensors.safetensors", "does not match the sha256")


def test_tensor_tampered(bundle):
    data = bytearray((bundle / TENSORS).read_bytes())
    for i in range(len(data) - 64, len(data) - 56):  # inside the last tensor's data, same length
        data[i] ^= 0xFF
    (bundle / TENSORS).write_bytes(bytes(data))
    refused(bundle, "does not match the sha256", "modified")


def test_unreadable_tensors_with_matching_hash(bundle):
    """Garbage whose hash was put into the manifest: not a safetensors file, said so."""
    (bundle / TENSORS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    manifest = read_manifest(bundle)
    manifest["tensors"]["sha256"] = hashlib.sha256((bundle / TENSORS).read_bytes()).hexdigest()
    write_manifest(bundle, manifest)
    refused(bundle, "cannot be read as safetensors")


def test_tensor_removed_hash_updated(bundle):
    dropped = rewrite_tensors(bundle, lambda k: k == "model.head.t0")
    assert dropped == ["model.head.t0"]
    refused(bundle, "lacks the tensor 'model.head.t0'")


def test_shape_in_manifest_changed(bundle):
    manifest = read_manifest(bundle)
    assert manifest["tensors"]["shapes"]["model.stack.programs"][0] == 4  # delta_0, 1 level, 2 scales
    manifest["tensors"]["shapes"]["model.stack.programs"] = [5, 3, 224, 224]
    write_manifest(bundle, manifest)
    refused(bundle, "tensor 'model.stack.programs'", "[4, 3, 224, 224]", "the manifest says [5, 3, 224, 224]")


def test_unknown_backbone_name(bundle):
    manifest = read_manifest(bundle)
    manifest["backbone"]["name"] = "ViT-Q-99"
    write_manifest(bundle, manifest)
    refused(bundle, "cannot rebuild the backbone", "unknown backbone 'ViT-Q-99'")


def test_embedded_weights_claimed_but_absent(bundle):
    assert read_manifest(bundle)["backbone"]["weights"] == "embedded"
    dropped = rewrite_tensors(bundle, lambda k: k.startswith("backbone."))
    assert dropped
    manifest = read_manifest(bundle)
    for name in dropped:
        del manifest["tensors"]["shapes"][name]
    write_manifest(bundle, manifest)
    refused(bundle, "says its backbone weights are embedded but holds none")


def test_class_count_disagrees_with_the_tensors(bundle):
    manifest = read_manifest(bundle)
    manifest["classnames"] = manifest["classnames"][:-1]
    write_manifest(bundle, manifest)
    refused(bundle, "names 8 classes but was trained on 9")


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def test_save_into_missing_folder_writes_nothing(made, tmp_path):
    _, model, cfg, classnames = made
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "absent" / "m.dga"
    with pytest.raises(BundleError, match="does not exist; create it first") as info:
        save_bundle(out, model, cfg, classnames, {})
    assert "absent" in str(info.value)
    assert sorted(tmp_path.iterdir()) == before


def test_save_over_existing_bundle_replaces_it_atomically(made, bundle):
    _, model, cfg, classnames = made
    parent = bundle.parent
    (bundle / "stale.txt").write_text("from the old bundle")
    with torch.no_grad():
        old = model.stack.programs.detach().clone()
        model.stack.programs.add_(1.0)
    try:
        save_bundle(bundle, model, cfg, classnames, {"note": "second"}, {"extra/hello.txt": b"hi"})
    finally:
        with torch.no_grad():
            model.stack.programs.copy_(old)
    assert sorted(p.name for p in parent.iterdir()) == ["copy.dga"], "no .tmp-* / .old-* left behind"
    assert not (bundle / "stale.txt").exists(), "the old bundle is replaced, not merged"
    assert (bundle / "extra" / "hello.txt").read_bytes() == b"hi"
    b = load_bundle(bundle)
    assert b.manifest["training"] == {"note": "second"}
    assert torch.equal(b.model.stack.programs, old + 1.0)


def test_failed_save_keeps_the_existing_bundle(made, bundle):
    _, model, cfg, classnames = made
    before = (bundle / TENSORS).read_bytes()
    with pytest.raises(FileNotFoundError):
        save_bundle(bundle, model, cfg, classnames, {}, {"x.bin": bundle.parent / "does-not-exist.bin"})
    assert (bundle / TENSORS).read_bytes() == before
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["copy.dga"]
    load_bundle(bundle)
