"""The installed layout: every sub-package is shipped, every console script points at a real main."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_is_listed():
    setuptools = PYPROJECT["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    assert sorted(setuptools["packages"]) == sorted(mapped)
    folders = {Path(folder) for folder in mapped.values()}
    # A folder with an __init__.py under a mapped folder that is not mapped itself would be left
    # out of a non-editable install (pip install .), while an editable one still finds it.
    for top in list(folders):
        for init in (ROOT / top).rglob("__init__.py"):
            folder = init.parent.relative_to(ROOT)
            assert folder in folders, f"{folder} is a package but not in [tool.setuptools] packages"


def test_console_scripts_resolve():
    for name, target in PYPROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_runtime_dependencies_are_the_runtime_only():
    base = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in PYPROJECT["project"]["dependencies"]}
    assert base == {"numpy", "pillow", "typer", "onnxruntime", "tqdm"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"train", "gpu", "tensorrt", "docs", "test"} <= set(extras)
    assert any(d.startswith("torch") for d in extras["train"])
