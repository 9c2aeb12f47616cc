"""Engine cache keys, profiles and hit/miss/stale/foreign decisions, on files written in tmp_path."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from dga.errors import DgaError, EngineError
from dga.runtime.engine_key import (
    EngineKey,
    EngineSpecError,
    Profile,
    atomic_write_bytes,
    check_engine,
    choose_profile,
    engine_paths,
    file_sha256,
    find_foreign,
    read_sidecar,
    write_sidecar,
)

ONNX_HASH = "ab" * 32
PLAN = b"serialized-plan-bytes" * 50


def make_key(**changes: object) -> EngineKey:
    base = EngineKey(
        onnx_sha256=ONNX_HASH,
        trt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profile=Profile(1, 64, 256),
        precision="fp16",
    )
    return dataclasses.replace(base, **changes)


def install(package_dir, key: EngineKey, plan: bytes = PLAN):
    plan_path, sidecar_path = engine_paths(package_dir, key)
    atomic_write_bytes(plan_path, plan)
    write_sidecar(sidecar_path, key, plan)
    return plan_path, sidecar_path


# --- Profile -------------------------------------------------------------------------------------


def test_profile_accepts_ordered_batches():
    assert Profile(1, 1, 1).max_batch == 1
    assert Profile(1, 64, 256).opt_batch == 64


@pytest.mark.parametrize("batches", [(0, 1, 1), (2, 1, 4), (1, 8, 4), (1, 2, 1), (-1, 1, 2), (1, 2.0, 4),
                                     (True, 1, 2)])
def test_profile_rejects_disorder_and_non_integers(batches):
    with pytest.raises(EngineSpecError, match="1 <= min <= opt <= max") as info:
        Profile(*batches)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DgaError)


def test_choose_profile_defaults_and_clamps_opt():
    assert choose_profile() == Profile(1, 64, 256)
    assert choose_profile(max_batch=16) == Profile(1, 16, 16)
    assert choose_profile(max_batch=32, opt_batch=8) == Profile(1, 8, 32)
    with pytest.raises(EngineSpecError):
        choose_profile(max_batch=0)
    with pytest.raises(EngineSpecError):
        choose_profile(max_batch=8, opt_batch=0)


# --- EngineKey -----------------------------------------------------------------------------------


def test_digest_is_stable_and_canonical():
    key = make_key()
    assert key.digest() == make_key().digest()
    assert key.digest() == hashlib.sha256(key.to_json().encode()).hexdigest()
    assert len(key.stem()) == 20 and key.digest().startswith(key.stem())
    # Canonical JSON: sorted keys, no whitespace; reordering the input dict changes nothing.
    data = json.loads(key.to_json())
    assert key.to_json() == json.dumps(data, sort_keys=True, separators=(",", ":"))
    shuffled = json.dumps(dict(reversed(list(data.items()))))
    assert EngineKey.from_json(shuffled).digest() == key.digest()


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"trt_version": "10.13.0.36"},
        {"trt_version": "11.0.0.1"},
        {"gpu_name": "NVIDIA H200"},
        {"compute_capability": "8.9"},
        {"profile": Profile(1, 32, 256)},
        {"profile": Profile(2, 64, 256)},
        {"profile": Profile(1, 64, 128)},
        {"precision": "fp32"},
    ],
)
def test_every_field_changes_the_digest(change):
    assert make_key(**change).digest() != make_key().digest()


def test_json_round_trip():
    key = make_key(precision="fp32", profile=Profile(1, 8, 8))
    assert EngineKey.from_json(key.to_json()) == key


@pytest.mark.parametrize(
    "change",
    [{"onnx_sha256": "xyz"}, {"onnx_sha256": "AB" * 32}, {"compute_capability": "sm90"},
     {"precision": "int8"}, {"gpu_name": ""}, {"trt_version": " "}],
)
def test_key_rejects_bad_fields(change):
    with pytest.raises(EngineSpecError):
        make_key(**change)


def test_from_json_rejects_missing_extra_and_garbled():
    data = json.loads(make_key().to_json())
    with pytest.raises(EngineSpecError, match="not valid JSON"):
        EngineKey.from_json(make_key().to_json()[:-5])
    with pytest.raises(EngineSpecError, match="exactly the fields"):
        EngineKey.from_json(json.dumps({k: v for k, v in data.items() if k != "gpu_name"}))
    with pytest.raises(EngineSpecError, match="exactly the fields"):
        EngineKey.from_json(json.dumps({**data, "extra": 1}))
    with pytest.raises(EngineSpecError, match="format"):
        EngineKey.from_json(json.dumps({**data, "key_format": 99}))


def test_file_sha256_streams_large_files(tmp_path):
    path = tmp_path / "model.onnx"
    data = bytes(range(256)) * 20_000  # 5 MB, several read chunks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_engine_paths(tmp_path):
    key = make_key()
    plan, sidecar = engine_paths(tmp_path, key)
    assert plan == tmp_path / "engines" / f"{key.stem()}.plan"
    assert sidecar == tmp_path / "engines" / f"{key.stem()}.json"


# --- check_engine --------------------------------------------------------------------------------


def test_miss_then_hit(tmp_path):
    key = make_key()
    assert check_engine(tmp_path, key).status == "miss"
    install(tmp_path, key)
    decision = check_engine(tmp_path, key, verify_plan=True)
    assert decision.status == "hit", decision.reason
    assert decision.plan_path.read_bytes() == PLAN
    record = read_sidecar(decision.sidecar_path)
    assert record.key == key and record.plan_bytes == len(PLAN)
    assert record.plan_sha256 == hashlib.sha256(PLAN).hexdigest()


def test_tampered_sidecar_with_consistent_digest_is_stale(tmp_path):
    """Someone edits the key inside the sidecar (and its digest) at our stem: never a hit."""
    key = make_key()
    _, sidecar = install(tmp_path, key)
    data = json.loads(sidecar.read_text())
    other = make_key(gpu_name="NVIDIA A100-SXM4-80GB")
    data["key"], data["digest"] = other.to_dict(), other.digest()
    sidecar.write_text(json.dumps(data))
    decision = check_engine(tmp_path, key)
    assert decision.status == "stale" and "gpu_name" in decision.reason


def test_tampered_sidecar_field_only_is_stale(tmp_path):
    key = make_key()
    _, sidecar = install(tmp_path, key)
    data = json.loads(sidecar.read_text())
    data["key"]["trt_version"] = "10.0.0.1"  # digest left as it was
    sidecar.write_text(json.dumps(data))
    decision = check_engine(tmp_path, key)
    assert decision.status == "stale" and "digest" in decision.reason


def test_plan_without_sidecar_is_stale(tmp_path):
    key = make_key()
    _, sidecar = install(tmp_path, key)
    sidecar.unlink()
    decision = check_engine(tmp_path, key)
    assert decision.status == "stale" and "no sidecar" in decision.reason


def test_sidecar_without_plan_is_stale(tmp_path):
    key = make_key()
    plan, _ = install(tmp_path, key)
    plan.unlink()
    decision = check_engine(tmp_path, key)
    assert decision.status == "stale" and "missing" in decision.reason


@pytest.mark.parametrize("cut", [0, 1, 40, -2])
def test_truncated_sidecar_is_stale(tmp_path, cut):
    key = make_key()
    _, sidecar = install(tmp_path, key)
    text = sidecar.read_text()
    sidecar.write_text(text[:cut] if cut >= 0 else text[:cut - 1] + "\x00")
    assert check_engine(tmp_path, key).status == "stale"


def test_non_object_sidecar_is_stale(tmp_path):
    key = make_key()
    _, sidecar = install(tmp_path, key)
    sidecar.write_text("[1, 2, 3]")
    assert check_engine(tmp_path, key).status == "stale"


def test_truncated_or_altered_plan(tmp_path):
    key = make_key()
    plan, _ = install(tmp_path, key)
    plan.write_bytes(PLAN[:-10])
    decision = check_engine(tmp_path, key)
    assert decision.status == "stale" and "bytes" in decision.reason
    plan.write_bytes(PLAN[:-1] + b"X")  # same size, different bytes
    assert check_engine(tmp_path, key).status == "hit"
    assert check_engine(tmp_path, key, verify_plan=True).status == "stale"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "engines" / "x.plan"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, memoryview(b"two"))
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.plan"]


# --- find_foreign --------------------------------------------------------------------------------


def test_find_foreign_lists_other_gpu_trt_and_onnx_only(tmp_path):
    key = make_key()
    install(tmp_path, key)
    install(tmp_path, make_key(precision="fp32"))  # a variant, not foreign
    install(tmp_path, make_key(profile=Profile(1, 8, 16)))  # a variant, not foreign
    other_gpu = make_key(gpu_name="NVIDIA A10G", compute_capability="8.6")
    other_trt = make_key(trt_version="11.0.0.1")
    other_onnx = make_key(onnx_sha256="ef" * 32)
    for k in (other_gpu, other_trt, other_onnx):
        install(tmp_path, k)
    (tmp_path / "engines" / "garbage.json").write_text("{not json")
    (tmp_path / "engines" / "timing.cache").write_bytes(b"cache")

    foreign = {f.key: f for f in find_foreign(tmp_path, key)}
    assert set(foreign) == {other_gpu, other_trt, other_onnx}
    assert foreign[other_gpu].mismatched == ("gpu_name", "compute_capability")
    assert foreign[other_trt].mismatched == ("trt_version",)
    assert foreign[other_onnx].mismatched == ("onnx_sha256",)
    message = foreign[other_gpu].message()
    assert message.startswith(f"engine {other_gpu.stem()}.plan was built for GPU NVIDIA A10G")
    assert "TensorRT 10.13.0.35" in message and message.endswith("rebuild with dga-export --engine.")
    assert foreign[other_gpu].plan_path.is_file()


def test_find_foreign_without_engines_folder(tmp_path):
    assert find_foreign(tmp_path, make_key()) == []


def test_spec_error_is_an_engine_error():
    assert issubclass(EngineSpecError, EngineError)


# --- find_engine: the runtime's refusal, one sentence per case ------------------------------------


def _package(tmp_path):
    """A stand-in package: only the facts find_engine reads (the graph's sha256 and the batch profile)."""
    from dga.runtime.package import DeployPackage

    return DeployPackage(tmp_path, {"files": {"model.fp16.onnx": {"sha256": ONNX_HASH, "bytes": 1}},
                                    "batch": {"min": 1, "opt": 64, "max": 256}})


@pytest.mark.parametrize("case,needle", [
    ("other-package", "differs here in onnx_sha256"),
    ("other-gpu", "differs here in gpu_name, compute_capability"),
    ("other-tensorrt", "differs here in trt_version"),
    ("truncated-plan", "build one with dga-export"),
    ("none", "build one with dga-export"),
])
def test_find_engine_refuses_with_one_sentence(case, needle, tmp_path):
    from dga.errors import PackageError
    from dga.runtime.backends.tensorrt import find_engine

    pkg = _package(tmp_path)
    key = make_key()
    if case == "other-package":
        install(tmp_path, make_key(onnx_sha256="cd" * 32))  # the engines/ of another package copied in
    elif case == "other-gpu":
        install(tmp_path, make_key(gpu_name="NVIDIA A10G", compute_capability="8.6"))
    elif case == "other-tensorrt":
        install(tmp_path, make_key(trt_version="11.0.0.1"))
    elif case == "truncated-plan":
        plan, _ = install(tmp_path, key)
        plan.write_bytes(PLAN[:-1])
    assert find_foreign(tmp_path, key) == [] or case.startswith("other")
    with pytest.raises(PackageError, match=needle) as info:
        find_engine(pkg, "fp16", key.trt_version, key.gpu_name, key.compute_capability)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"no TensorRT fp16 engine in {tmp_path} for {key.gpu_name}")
    install(tmp_path, key)  # the right engine beside it is found
    assert find_engine(pkg, "fp16", key.trt_version, key.gpu_name, key.compute_capability)[0] == key
