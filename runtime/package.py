"""Reading a deployment package (``run.deploy/``) written by dga-export; numpy/stdlib only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dga.errors import PackageError
from dga.runtime.engine_key import file_sha256

FORMAT = "dga-deploy"
VERSION = 1
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}


@dataclass
class DeployPackage:
    path: Path
    facts: dict

    @classmethod
    def load(cls, path: str | Path) -> DeployPackage:
        path = Path(path)
        meta = path / "deploy.json"
        if not meta.is_file():
            raise PackageError(f"no deployment package at {path}: expected deploy.json (made by dga-export)")
        try:
            facts = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{meta} is not valid JSON ({exc}): export the package again") from exc
        if not isinstance(facts, dict) or facts.get("format") != FORMAT:
            raise PackageError(f"{meta} is not a dga deployment manifest")
        if facts.get("version") != VERSION:
            raise PackageError(f"{path} is package version {facts.get('version')}; this dga reads {VERSION}: "
                               f"export it again with this dga")
        for key in ("classnames", "s0", "input", "outputs", "files"):
            if key not in facts:
                raise PackageError(f"{meta} lacks '{key}': export the package again")
        return cls(path, facts)

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
    def max_batch(self) -> int:
        return int(self.facts.get("batch", {}).get("max", 256))

    @property
    def hierarchy(self) -> dict | None:
        return self.facts.get("hierarchy")

    def precisions(self) -> list[str]:
        return [p for p, name in ONNX_FILES.items() if name in self.facts["files"]]

    def onnx_path(self, precision: str, check_hash: bool = True) -> Path:
        """The ONNX file of a precision, checked against the sha256 recorded at export."""
        name = ONNX_FILES.get(precision)
        if name is None or name not in self.facts["files"]:
            raise PackageError(f"{self.path} has no {precision} graph (it has {', '.join(self.precisions())})")
        file = self.path / name
        if not file.is_file():
            raise PackageError(f"{file} is missing: copy the whole package directory")
        if check_hash and file_sha256(file) != self.facts["files"][name]["sha256"]:
            raise PackageError(f"{file} does not match the sha256 in deploy.json (truncated or modified): "
                               f"export the package again")
        return file

    def level_names(self) -> list[str]:
        h = self.hierarchy
        return [f"level_{i + 1}" for i in range(len(h["level_sizes"]))] if h else []

    def levels_of(self, class_index: int) -> list[int]:
        """Super-class (group index) of a class at each hierarchy level, finest first."""
        h = self.hierarchy
        return [parents[class_index] for parents in h["parents"]] if h else []
