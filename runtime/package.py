"""The deployment package format (``run.deploy/``): the one definition, numpy/stdlib only.

The exporter writes it (``write_manifest``), the runtime and the verifier read it
(``DeployPackage.load``). A package is a directory:

    deploy.json          the manifest below; every other file is listed in it with its sha256
                         (``files``); its other facts are covered by a digest each graph carries
    model.onnx           fp32 graph: uint8 images [B, S0, S0, 3] -> logits, probs float32 [B, C]
    model.fp16.onnx      the same graph with the encoder in fp16 (optional)
    model.int8.onnx      the same graph with the encoder's MatMul/Gemm quantized to int8 (optional)
    model*.onnx.data     ONNX external data of a graph over protobuf's 2 GB limit (only then)
    reference.npz        golden outputs: uint8 ``images`` [N, S0, S0, 3] and the trained torch
                         module's fp32 ``logits`` and ``probs`` [N, C] for them
    engines/             TensorRT plans with their own JSON sidecars (engine_key.py), added later

Integrity without a cycle: deploy.json holds each graph's sha256, so a digest of the whole manifest
cannot live inside a graph. Instead every graph's ONNX ``metadata_props`` hold ``manifest``, the
sha256 of the canonical JSON of every fact but ``files`` (``manifest_digest``). Editing a fact
(reordered classnames, another S0 or view list, a deploy.json from another package) breaks the
facts-vs-graph digest, checked on ``load`` by reading only the graphs' metadata (``onnx_metadata``,
a few reads: the weights are skipped, never parsed); editing a graph breaks its file sha256, checked
when it is used. Both are refused with one ``PackageError`` sentence before any inference.

Changing the format means changing this module and ``VERSION``; readers refuse other versions.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dga.errors import PackageError
from dga.runtime.engine_key import file_sha256

FORMAT = "dga-deploy"
VERSION = 3  # 2: golden outputs, external data, every file hashed; 3: the facts' digest in every graph
MANIFEST = "deploy.json"
# The graphs' metadata key holding the manifest digest, and the facts it leaves out: ``files`` holds
# the graphs' own hashes (covering it would make the digest depend on itself).
DIGEST_KEY = "manifest"
NOT_DIGESTED = ("files",)
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
REFERENCE_FILE = "reference.npz"
REFERENCE_ARRAYS = ("images", "logits", "probs")
REFERENCE_IMAGES = 16  # golden inputs stored at export
ENGINES_DIR = "engines"

# Tolerances of a deployed runner against the trained torch module (DESIGN.md 5), recorded in
# each manifest so that a verifier applies the ones the package was exported with.
FP32_MAX_ABS_LOGIT = 1e-3  # and 100 % top-1 agreement
FP16_TOP1_PERCENT = 99.5
INT8_TOP1_PERCENT = 99.0  # default of dga-export --int8-agreement
NEAR_TIE = 2e-3  # a top-1 flip where the reference's top-2 logits are this close is not counted

# key -> JSON type(s) of its value; a manifest lacking one or holding another type is refused.
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": str, "version": int, "method": str, "classnames": list, "s0": int,
    "input": dict, "outputs": list, "batch": dict, "files": dict, "precisions": list,
    "reference": dict, "views": list, "preprocess": dict, "hierarchy": (dict, type(None)),
}


def external_data_name(onnx_name: str) -> str:
    """The ONNX external-data file written beside a graph too large for one protobuf."""
    return onnx_name + ".data"


def graph_digest(onnx_path: Path) -> str:
    """What identifies a graph (TensorRT engine keys): its file's sha256 or, with external data, the
    sha256 of both files' digests, so a changed weight in ``.data`` changes the key too."""
    data = onnx_path.with_name(external_data_name(onnx_path.name))
    if not data.is_file():
        return file_sha256(onnx_path)
    return combined_digest(file_sha256(onnx_path), file_sha256(data))


def combined_digest(onnx_sha256: str, data_sha256: str) -> str:
    return hashlib.sha256(f"{onnx_sha256}:{data_sha256}".encode()).hexdigest()


def file_record(path: Path) -> dict:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def manifest_digest(facts: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace, ASCII) of every fact but ``files``.

    Taken over the facts as deploy.json reads back (a JSON round trip first), so the exporter's
    dict (tuples, int keys) and the loader's give the same digest.
    """
    covered = json.loads(json.dumps({k: v for k, v in facts.items() if k not in NOT_DIGESTED}))
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def digest_record(facts: dict) -> dict:
    """The value stored (JSON-encoded) under ``DIGEST_KEY`` in every graph's metadata_props."""
    return {"file": MANIFEST, "sha256": manifest_digest(facts), "excludes": list(NOT_DIGESTED)}


# -- ONNX metadata without the onnx package -----------------------------------------------------
# An ONNX file is one protobuf ModelProto; its metadata_props (field 14) are StringStringEntryProto
# messages (key = 1, value = 2). The graph (field 7), weights included when inline, is one
# length-delimited field that is skipped with a seek.
_METADATA_FIELD = 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(read) -> int:
    value = shift = 0
    while shift < 64:
        byte = read(1)
        if not byte:
            raise ValueError("it ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("a varint is longer than 10 bytes")


def _fields(f, end: int, keep: tuple[int, ...]):
    """(field number, bytes) of each length-delimited field numbered in ``keep`` of the protobuf
    message read from ``f`` up to offset ``end``; every other field is skipped (seeked over)."""
    while f.tell() < end:
        key = _varint(f.read)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("a field has number 0")
        if wire == _VARINT:
            _varint(f.read)
            continue
        if wire not in (_FIXED64, _LENGTH, _FIXED32):
            raise ValueError(f"wire type {wire} is not one ONNX writes")
        size = {_FIXED64: 8, _FIXED32: 4}.get(wire) or _varint(f.read)
        if f.tell() + size > end:
            raise ValueError("it is truncated")
        if wire == _LENGTH and number in keep:
            yield number, f.read(size)
        else:
            f.seek(size, io.SEEK_CUR)


def onnx_metadata(path: Path) -> dict[str, str]:
    """The model-level metadata_props of an ONNX file, read without parsing (or loading) the graph.

    Raises ValueError (or OSError) for a file that is not a protobuf message.
    """
    props: dict[str, str] = {}
    with open(path, "rb") as f:
        for _, entry in _fields(f, Path(path).stat().st_size, keep=(_METADATA_FIELD,)):
            strings = dict(_fields(io.BytesIO(entry), len(entry), keep=(1, 2)))  # key = 1, value = 2
            try:
                props[strings.get(1, b"").decode("utf-8")] = strings.get(2, b"").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError("a metadata entry is not UTF-8") from exc
    return props


def write_manifest(directory: Path, facts: dict, files: list[str]) -> Path:
    """Hash ``files`` (names inside ``directory``) into ``facts`` and write deploy.json there.

    Callers build the package in a temporary directory and rename it into place (export/package.py).
    """
    facts = {"format": FORMAT, "version": VERSION, **facts,
             "files": {name: file_record(directory / name) for name in files}}
    validate(facts, directory / MANIFEST)
    path = directory / MANIFEST
    path.write_text(json.dumps(facts, indent=1))
    return path


def validate(facts: object, where: Path) -> dict:
    if not isinstance(facts, dict) or facts.get("format") != FORMAT:
        raise PackageError(f"{where} is not a dga deployment manifest (format {FORMAT!r} expected)")
    if facts.get("version") != VERSION:
        raise PackageError(f"{where.parent} is package version {facts.get('version')}; this dga reads version "
                           f"{VERSION}: export it again with this dga")
    for key, kind in SCHEMA.items():
        if key not in facts:
            raise PackageError(f"{where} lacks '{key}': export the package again")
        if not isinstance(facts[key], kind) or (kind is int and isinstance(facts[key], bool)):
            raise PackageError(f"{where}: '{key}' has the wrong type: export the package again")
    if facts["reference"].get("file") not in facts["files"]:
        raise PackageError(f"{where}: the golden outputs are not among its files: export the package again")
    return facts


@dataclass
class Reference:
    """Golden inputs and the trained module's outputs for them, as stored at export."""

    images: np.ndarray  # uint8 [N, S0, S0, 3]
    logits: np.ndarray  # float32 [N, C]
    probs: np.ndarray  # float32 [N, C]
    source: str  # "given" (from --verify-images) or "generated"


@dataclass
class DeployPackage:
    path: Path
    facts: dict

    @classmethod
    def load(cls, path: str | Path) -> DeployPackage:
        """Read and validate deploy.json and check its facts against the digest in every graph
        (``check_digest``); files are hashed when used (``onnx_path``) or all at once (``check_files``)."""
        path = Path(path)
        meta = path / MANIFEST
        if not meta.is_file():
            raise PackageError(f"no deployment package at {path}: expected {MANIFEST} (made by dga-export)")
        try:
            facts = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{meta} is not valid JSON ({exc}): export the package again") from exc
        package = cls(path, validate(facts, meta))
        for precision in package.precisions():
            package.check_digest(precision)
        return package

    # -- facts ---------------------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        return self.facts["classnames"]

    @property
    def s0(self) -> int:
        return int(self.facts["s0"])

    @property
    def input_name(self) -> str:
        return self.facts["input"]["name"]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.facts["outputs"]]

    @property
    def max_batch(self) -> int:
        return int(self.facts["batch"].get("max", 256))

    @property
    def hierarchy(self) -> dict | None:
        return self.facts.get("hierarchy")

    @property
    def tolerances(self) -> dict:
        return self.facts["reference"].get("tolerances") or {
            "fp32_max_abs_logit": FP32_MAX_ABS_LOGIT, "fp16_top1_percent": FP16_TOP1_PERCENT,
            "int8_top1_percent": INT8_TOP1_PERCENT, "near_tie": NEAR_TIE}

    def precisions(self) -> list[str]:
        return [p for p, name in ONNX_FILES.items() if name in self.facts["files"]]

    def level_names(self) -> list[str]:
        h = self.hierarchy
        return [f"level_{i + 1}" for i in range(len(h["level_sizes"]))] if h else []

    def levels_of(self, class_index: int) -> list[int]:
        """Super-class (group index) of a class at each hierarchy level, finest first."""
        h = self.hierarchy
        return [parents[class_index] for parents in h["parents"]] if h else []

    # -- files ---------------------------------------------------------------------------------
    def checked_file(self, name: str, check_hash: bool = True) -> Path:
        """A file of the package, present and matching the sha256 recorded at export."""
        record = self.facts["files"].get(name)
        if record is None:
            raise PackageError(f"{self.path} has no file {name} in its {MANIFEST}")
        file = self.path / name
        if not file.is_file():
            raise PackageError(f"{file} is missing: copy the whole package directory")
        if check_hash and (file.stat().st_size != record.get("bytes") or file_sha256(file) != record.get("sha256")):
            raise PackageError(f"{file} does not match the sha256 in {MANIFEST} (truncated or modified): "
                               f"export the package again")
        return file

    def graph_digest(self, precision: str) -> str | None:
        """``graph_digest`` of a precision's graph from the hashes in deploy.json (None: no such graph)."""
        name = ONNX_FILES.get(precision)
        files = self.facts["files"]
        if name not in files:
            return None
        data = files.get(external_data_name(name))
        return files[name]["sha256"] if data is None else combined_digest(files[name]["sha256"], data["sha256"])

    def check_files(self) -> list[str]:
        """Hash every file the manifest lists; the first that is missing or altered is refused."""
        for name in self.facts["files"]:
            self.checked_file(name)
        return list(self.facts["files"])

    def _graph_name(self, precision: str) -> str:
        name = ONNX_FILES.get(precision)
        if name is None or name not in self.facts["files"]:
            raise PackageError(f"{self.path} has no {precision} graph (it has {', '.join(self.precisions())})")
        return name

    def check_digest(self, precision: str) -> Path:
        """The graph of a precision carries the digest of these facts (only its metadata is read).

        With the graph's sha256 (``onnx_path``) this binds deploy.json to the graphs: an edited
        manifest, or one copied from another package, is refused before anything runs.
        """
        file = self.checked_file(self._graph_name(precision), check_hash=False)
        try:
            metadata = onnx_metadata(file)
        except (OSError, ValueError) as exc:
            raise PackageError(f"{file} cannot be read as an ONNX graph ({exc}): export the package again") from exc
        try:
            found = json.loads(metadata[DIGEST_KEY])["sha256"]
        except (KeyError, ValueError, TypeError) as exc:
            raise PackageError(f"{file} carries no digest of its {MANIFEST}: export the package again with this "
                               f"dga") from exc
        if found != manifest_digest(self.facts):
            raise PackageError(f"{self.path / MANIFEST} does not match the digest in {file.name} (edited, or "
                               f"copied from another package): export the package again")
        return file

    def onnx_path(self, precision: str, check_hash: bool = True) -> Path:
        """The ONNX file of a precision (and its external data, if any), checked against deploy.json:
        its sha256 (unless ``check_hash`` is off) and the manifest digest it carries."""
        name = self._graph_name(precision)
        data = external_data_name(name)
        if data in self.facts["files"]:
            self.checked_file(data, check_hash)
        self.checked_file(name, check_hash)
        return self.check_digest(precision)

    def reference(self, check_hash: bool = True) -> Reference:
        ref = self.facts["reference"]
        file = self.checked_file(ref["file"], check_hash)
        try:
            with np.load(file, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in REFERENCE_ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise PackageError(f"{file} is not a golden-output file ({exc}): export the package again") from exc
        n, c = len(arrays["images"]), len(self.classnames)
        if (arrays["images"].dtype != np.uint8 or arrays["images"].shape != (n, self.s0, self.s0, 3)
                or arrays["logits"].shape != (n, c) or arrays["probs"].shape != (n, c)):
            raise PackageError(f"{file} holds arrays of the wrong shape for this package: export it again")
        return Reference(arrays["images"], arrays["logits"], arrays["probs"], ref.get("source", "unknown"))
