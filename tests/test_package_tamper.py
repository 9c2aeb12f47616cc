"""Package integrity: an edited, mixed-up or incomplete package is refused with one sentence, before any
inference (runtime/package.py: the file hashes in deploy.json and the manifest digest in every graph)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dga.errors import PackageError

BIN = Path(sys.executable).parent
EDITED = "deploy.json does not match the digest in model.onnx (edited, or copied from another package)"


def _copy(package: Path, tmp_path: Path, name: str = "copy.deploy") -> Path:
    return Path(shutil.copytree(package, tmp_path / name))


def _facts(pkg: Path) -> dict:
    return json.loads((pkg / "deploy.json").read_text())


def _write_facts(pkg: Path, facts: dict) -> None:
    (pkg / "deploy.json").write_text(json.dumps(facts, indent=1))


def _rehash(pkg: Path, *names: str) -> None:
    """Record files' new sha256 in deploy.json (what someone 'repairing' a package by hand would do)."""
    from dga.runtime.package import file_record

    facts = _facts(pkg)
    for name in names:
        facts["files"][name] = file_record(pkg / name)
    _write_facts(pkg, facts)


def _one_sentence(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.count(". ") == 0, msg
    return msg


@pytest.fixture(scope="module")
def other_package(backbone, shapes_data, tmp_path_factory) -> Path:
    """Another package of the same classes and S0 (another bundle, fp32 only, no self-check: fast)."""
    from conftest import make_random_bundle

    from dga.export.package import ExportOptions, export_package

    base = tmp_path_factory.mktemp("other_package")
    bundle = make_random_bundle(backbone, shapes_data, "dga", base / "other.dga", 99)
    opts = ExportOptions(precision="fp32", max_batch=8, opt_batch=8, verify=False)
    path, _ = export_package(bundle, base / "other.deploy", opts, log=lambda _line: None)
    return path


# ----------------------------------------------------------------------------------------------
# the digest and the metadata reader, on hand-made values


def test_manifest_digest_is_sha256_of_canonical_facts_without_files():
    from dga.runtime.package import manifest_digest

    facts = {"s0": 192, "files": {"model.onnx": {"sha256": "ab"}}, "classnames": ["b", "a"], "batch": {"max": 8}}
    canonical = b'{"batch":{"max":8},"classnames":["b","a"],"s0":192}'  # sorted keys, no whitespace, no files
    assert manifest_digest(facts) == hashlib.sha256(canonical).hexdigest()
    assert manifest_digest({**facts, "files": {}}) == manifest_digest(facts)  # files are not covered
    assert manifest_digest(dict(reversed(list(facts.items())))) == manifest_digest(facts)  # key order is not
    assert manifest_digest({**facts, "classnames": ["a", "b"]}) != manifest_digest(facts)
    assert manifest_digest({**facts, "batch": (8,)}) == manifest_digest({**facts, "batch": [8]})  # as JSON reads


def test_onnx_metadata_reads_protobuf_without_onnx(tmp_path):
    from dga.runtime.package import onnx_metadata

    # ModelProto: ir_version (field 1, varint) 8; a graph (field 7) of 3 bytes; metadata_props (field
    # 14) {key (1): "k", value (2): "v"}; the graph's bytes are skipped, whatever they hold.
    entry = b"\x0a\x01k\x12\x01v"
    model = b"\x08\x08" + b"\x3a\x03\x72\x06\xff" + b"\x72" + bytes([len(entry)]) + entry
    (tmp_path / "m.onnx").write_bytes(model)
    assert onnx_metadata(tmp_path / "m.onnx") == {"k": "v"}
    for bad in (model[:-1], b"not an onnx graph", b"\x08"):
        (tmp_path / "bad.onnx").write_bytes(bad)
        with pytest.raises(ValueError):
            onnx_metadata(tmp_path / "bad.onnx")


def test_onnx_metadata_equals_what_onnx_reads(tiny_package):
    import onnx

    from dga.runtime.package import onnx_metadata

    for name in ("model.onnx", "model.fp16.onnx"):
        proto = onnx.load(str(tiny_package / name), load_external_data=False)
        assert onnx_metadata(tiny_package / name) == {p.key: p.value for p in proto.metadata_props}


def test_every_graph_carries_the_digest_of_the_final_facts(tiny_package):
    from dga.export.onnx_export import encode_metadata
    from dga.export.package import graph_metadata
    from dga.runtime.package import DIGEST_KEY, manifest_digest, onnx_metadata

    facts = _facts(tiny_package)
    for precision, name in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx")):
        meta = onnx_metadata(tiny_package / name)
        assert json.loads(meta[DIGEST_KEY]) == {"file": "deploy.json", "sha256": manifest_digest(facts),
                                                "excludes": ["files"]}
        assert meta == encode_metadata(graph_metadata(facts, precision))
        assert json.loads(meta["classnames"]) == facts["classnames"] and meta["precision"] == precision


def test_int8_graph_gets_the_same_metadata(tiny_package, tmp_path):
    """Any graph added to a package (here model.int8.onnx) is sealed by the one metadata writer."""
    from dga.export.onnx_export import encode_metadata
    from dga.export.package import graph_metadata, write_manifest
    from dga.export.quantize import quantize_int8
    from dga.runtime.package import DeployPackage, onnx_metadata

    pkg = _copy(tiny_package, tmp_path)
    quantize_int8(pkg / "model.onnx", pkg / "model.int8.onnx", "dynamic")
    facts = _facts(pkg)
    facts["precisions"] = [*facts["precisions"], "int8"]
    del facts["files"]
    write_manifest(pkg, facts, ["model.onnx", "model.fp16.onnx", "model.int8.onnx", "reference.npz"])
    loaded = DeployPackage.load(pkg)
    assert loaded.precisions() == ["fp32", "fp16", "int8"]
    assert onnx_metadata(pkg / "model.int8.onnx") == encode_metadata(graph_metadata(loaded.facts, "int8"))
    loaded.check_files()
    assert loaded.onnx_path("int8") == pkg / "model.int8.onnx"


# ----------------------------------------------------------------------------------------------
# an edited deploy.json


def _reorder_classes(f):
    f["classnames"] = f["classnames"][::-1]


def _drop_view(f):
    f["views"] = f["views"][:-1]


def _other_s0(f):
    f["s0"] = f["s0"] + 32
    f["input"]["shape"][1:3] = [f["s0"], f["s0"]]


def _loose_tolerance(f):
    f["reference"]["tolerances"]["fp32_max_abs_logit"] = 1.0


def _bigger_batch(f):
    f["batch"]["max"] = 4096


def _hierarchy_parents(f):
    f["hierarchy"] = None


@pytest.mark.parametrize("edit", [_reorder_classes, _drop_view, _other_s0, _loose_tolerance, _bigger_batch,
                                  _hierarchy_parents], ids=lambda e: e.__name__.strip("_"))
def test_edited_manifest_is_refused_on_load(edit, tiny_package, tmp_path):
    from dga.runtime.package import DeployPackage
    from dga.runtime.predictor import Predictor

    pkg = _copy(tiny_package, tmp_path)
    facts = _facts(pkg)
    edit(facts)
    _write_facts(pkg, facts)
    with pytest.raises(PackageError, match="does not match the digest in model") as info:
        DeployPackage.load(pkg)
    assert EDITED in _one_sentence(info.value) and _one_sentence(info.value).endswith("export the package again")
    with pytest.raises(PackageError, match="does not match the digest"):
        Predictor.from_package(pkg, backend="onnxruntime")


def test_edited_manifest_is_refused_by_the_clis(tiny_package, tmp_path):
    pkg = _copy(tiny_package, tmp_path)
    facts = _facts(pkg)
    _reorder_classes(facts)
    _write_facts(pkg, facts)
    (tmp_path / "photos").mkdir()
    for cmd in (["dga-verify", str(pkg)],
                ["dga-infer", str(tmp_path / "photos"), "--model", str(pkg), "--out", str(tmp_path / "p.csv")]):
        proc = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=240)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (cmd[0], proc.stderr)
        assert "does not match the digest in model.onnx" in proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_manifest_from_another_package_is_refused(tiny_package, other_package, tmp_path):
    from dga.runtime import verify
    from dga.runtime.package import DeployPackage

    assert _facts(other_package)["classnames"] == _facts(tiny_package)["classnames"]
    pkg = _copy(tiny_package, tmp_path)
    shutil.copy2(other_package / "deploy.json", pkg / "deploy.json")
    with pytest.raises(PackageError, match="does not match the digest in model.onnx") as info:
        DeployPackage.load(pkg)
    _one_sentence(info.value)
    with pytest.raises(PackageError, match="copied from another package"):
        verify(pkg)
    # Its file hashes do not match either: with the other package's digest forged into this graph,
    # the graph is refused by its sha256 before a session is made.
    forged = _copy(tiny_package, tmp_path, "forged.deploy")
    shutil.copy2(other_package / "deploy.json", forged / "deploy.json")
    _seal_in_place(forged / "model.onnx", _facts(forged))
    DeployPackage.load(forged)  # the digest matches now
    from dga.runtime.predictor import Predictor

    with pytest.raises(PackageError, match="model.onnx does not match the sha256 in deploy.json"):
        Predictor.from_package(forged, backend="onnxruntime", precision="fp32")


def test_graph_from_another_package_is_refused(tiny_package, other_package, tmp_path):
    from dga.runtime.package import DeployPackage

    pkg = _copy(tiny_package, tmp_path)
    shutil.copy2(other_package / "model.onnx", pkg / "model.onnx")
    with pytest.raises(PackageError, match="does not match the digest in model.onnx"):
        DeployPackage.load(pkg)  # before any graph is hashed: the other package's digest is not this one's
    _rehash(pkg, "model.onnx")  # even with its sha256 recorded
    with pytest.raises(PackageError, match="does not match the digest in model.onnx"):
        DeployPackage.load(pkg)


def _seal_in_place(graph: Path, facts: dict) -> None:
    """Write the digest of ``facts`` into a graph's metadata (what a deliberate forger would do)."""
    import onnx

    from dga.runtime.package import DIGEST_KEY, digest_record

    proto = onnx.load(str(graph), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == DIGEST_KEY:
            prop.value = json.dumps(digest_record(facts))
    graph.write_bytes(proto.SerializeToString())


def test_edited_manifest_with_forged_graph_digest_fails_the_graph_hash(tiny_package, tmp_path):
    """Both layers: a digest forged into the graph to match reordered classes changes the graph's bytes."""
    from dga.runtime import verify
    from dga.runtime.backends.torch_ref import TorchRunner
    from dga.runtime.package import DeployPackage
    from dga.runtime.predictor import Predictor

    pkg = _copy(tiny_package, tmp_path)
    facts = _facts(pkg)
    _reorder_classes(facts)
    _write_facts(pkg, facts)
    for name in ("model.onnx", "model.fp16.onnx"):
        _seal_in_place(pkg / name, facts)
    package = DeployPackage.load(pkg)  # the digests match now; the hashes cannot
    for precision in ("fp32", "fp16"):
        with pytest.raises(PackageError, match="does not match the sha256 in deploy.json"):
            Predictor.from_package(pkg, backend="onnxruntime", precision=precision)
    with pytest.raises(PackageError, match="model.onnx does not match the sha256"):
        TorchRunner(package)
    with pytest.raises(PackageError, match="does not match the sha256"):
        verify(pkg)


# ----------------------------------------------------------------------------------------------
# changed, missing and unreadable files


@pytest.mark.parametrize("case,needle", [
    ("weight-byte", "model.onnx does not match the sha256 in deploy.json (truncated or modified)"),
    ("truncated", "model.onnx cannot be read as an ONNX graph (it is truncated)"),
    ("missing-graph", "model.onnx is missing: copy the whole package directory"),
    ("missing-fp16", "model.fp16.onnx is missing: copy the whole package directory"),
    ("missing-reference", "reference.npz is missing: copy the whole package directory"),
    ("no-digest", "model.onnx carries no digest of its deploy.json"),
    ("not-onnx", "model.onnx cannot be read as an ONNX graph"),
])
def test_changed_or_missing_file_is_refused_before_inference(case, needle, tiny_package, tmp_path, monkeypatch):
    import onnx

    from dga.runtime import verify
    from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from dga.runtime.predictor import Predictor

    pkg = _copy(tiny_package, tmp_path)
    graph = pkg / "model.onnx"
    if case == "weight-byte":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0x01  # inside the weights: the metadata (and its digest) still reads
        graph.write_bytes(bytes(data))
    elif case == "truncated":
        graph.write_bytes(graph.read_bytes()[:-100])
    elif case.startswith("missing"):
        {"missing-graph": graph, "missing-fp16": pkg / "model.fp16.onnx",
         "missing-reference": pkg / "reference.npz"}[case].unlink()
    elif case == "no-digest":
        proto = onnx.load(str(graph), load_external_data=False)
        del proto.metadata_props[:]
        graph.write_bytes(proto.SerializeToString())
        _rehash(pkg, "model.onnx")
    elif case == "not-onnx":
        graph.write_bytes(b"not an onnx graph")
        _rehash(pkg, "model.onnx")
    sessions = []
    monkeypatch.setattr(OnnxRuntimeRunner, "infer", lambda self, images: sessions.append(len(images)))
    with pytest.raises(PackageError) as info:
        verify(pkg)
    assert needle in _one_sentence(info.value)
    if case != "missing-reference":  # what Predictor opens
        with pytest.raises(PackageError) as info:
            Predictor.from_package(pkg, backend="onnxruntime", precision="fp32")
        assert needle in _one_sentence(info.value)
    assert sessions == []  # no engine call ran


# ----------------------------------------------------------------------------------------------
# the TensorRT runner (a stand-in tensorrt module; no GPU needed)


class _Props:
    name, major, minor = "NVIDIA H100 80GB HBM3", 9, 0


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A stand-in tensorrt module and a CUDA-less torch that claims a GPU: TensorRTRunner runs up to
    deserialising its plan, which the stand-in records and refuses."""
    import torch

    deserialized: list[int] = []
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.13.0.35"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            deserialized.append(len(plan))
            return None

    trt.Logger, trt.Runtime = Logger, Runtime
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: _Props())
    return trt, deserialized


def _install_engine(pkg, trt_version: str, onnx_sha256: str | None = None, gpu: tuple[str, str] | None = None):
    from dga.runtime.engine_key import EngineKey, Profile, atomic_write_bytes, engine_paths, write_sidecar
    from dga.runtime.package import DeployPackage

    package = DeployPackage.load(pkg)
    name, capability = gpu or (_Props.name, f"{_Props.major}.{_Props.minor}")
    key = EngineKey(onnx_sha256 or package.graph_digest("fp32"), trt_version, name, capability, Profile(1, 8, 8),
                    "fp32")
    plan, sidecar = engine_paths(pkg, key)
    atomic_write_bytes(plan, b"plan" * 16)
    write_sidecar(sidecar, key, b"plan" * 16)


def test_tensorrt_runner_checks_the_graph_before_the_engine(fake_tensorrt, tiny_package, tmp_path):
    from dga.runtime.backends.tensorrt import TensorRTRunner
    from dga.runtime.package import DeployPackage

    trt, deserialized = fake_tensorrt
    pkg = _copy(tiny_package, tmp_path)
    _install_engine(pkg, trt.__version__)
    with pytest.raises(PackageError, match="TensorRT could not deserialize"):  # intact: it reaches the plan
        TensorRTRunner(DeployPackage.load(pkg), "fp32")
    assert deserialized == [64]
    data = bytearray((pkg / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # the engine's key (from deploy.json) still matches; the graph does not
    (pkg / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="model.onnx does not match the sha256") as info:
        TensorRTRunner(DeployPackage.load(pkg), "fp32")
    _one_sentence(info.value)
    assert deserialized == [64]  # the tampered package's engine was never loaded


@pytest.mark.parametrize("case,needle", [
    ("other-package", "differs here in onnx_sha256"),
    ("other-tensorrt", "differs here in trt_version"),
    ("other-gpu", "differs here in gpu_name, compute_capability"),
])
def test_tensorrt_runner_refuses_a_foreign_engine(case, needle, fake_tensorrt, tiny_package, tmp_path):
    from dga.runtime.backends.tensorrt import TensorRTRunner
    from dga.runtime.package import DeployPackage

    trt, deserialized = fake_tensorrt
    pkg = _copy(tiny_package, tmp_path)
    if case == "other-package":
        _install_engine(pkg, trt.__version__, onnx_sha256="ef" * 32)
    elif case == "other-tensorrt":
        _install_engine(pkg, "11.0.0.1")
    else:
        _install_engine(pkg, trt.__version__, gpu=("NVIDIA A10G", "8.6"))
    with pytest.raises(PackageError, match=needle) as info:
        TensorRTRunner(DeployPackage.load(pkg), "fp32")
    assert _one_sentence(info.value).endswith("rebuild with dga-export --engine.")
    assert deserialized == []


def test_predictor_refuses_runner_outputs_of_another_package(tiny_package):
    """An engine that answers with another class count is refused, never reported as this package's."""
    from dga.runtime.package import DeployPackage
    from dga.runtime.predictor import Predictor

    class OtherRunner:
        name, precision, max_batch, on_cpu = "other", "fp32", 8, True

        def infer(self, images):
            return np.zeros((len(images), 3), np.float32), np.full((len(images), 3), 1 / 3, np.float32)

        def close(self):
            pass

    package = DeployPackage.load(tiny_package)
    p = Predictor(package, OtherRunner())
    with pytest.raises(PackageError, match=r"shape \[2, 3\] for 2 images of a package with 9 classes"):
        p.predict(np.zeros((2, package.s0, package.s0, 3), np.uint8))
