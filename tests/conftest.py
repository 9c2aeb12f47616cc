"""Shared fixtures: a tiny random-weight open_clip backbone and a generated dataset."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = "dga-test-vit-p32"  # registered by dga.train.backbone from train/model_configs/


def pytest_configure(config):
    """Each session's tmp_path folders live in a folder of its own, removed when the session ends:
    no test leaves a temporary directory behind, and two sessions never share (or delete) one."""
    if config.option.basetemp is None:
        import tempfile

        config.option.basetemp = tempfile.mkdtemp(prefix="dga-pytest-")
        config._dga_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    import shutil

    made = getattr(config, "_dga_basetemp", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def _temp_entries() -> set[str]:
    import tempfile
    from pathlib import Path

    # dga-pytest-*: the tmp_path roots of pytest sessions (ours is removed at unconfigure; another
    # session running at the same time is not ours to judge).
    return {p.name for p in Path(tempfile.gettempdir()).iterdir()
            if p.name.startswith(("dga-", "tmp")) and not p.name.startswith("dga-pytest-")}


@pytest.fixture(scope="session", autouse=True)
def no_temporary_leftovers():
    """The code under test (exporter, verifier, bench, ...) removes every temporary folder it made."""
    before = _temp_entries()
    yield
    left = sorted(_temp_entries() - before)
    assert not left, f"temporary entries left behind in the temp dir: {left[:10]}"


@pytest.fixture(scope="session")
def backbone():
    from dga.train.backbone import load_backbone

    return load_backbone(TINY, None, seed=0)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """9 classes (3 colours x 3 shapes), train 8 / val 4 / test 4 per class, 64 px, plus descriptions."""
    from dga.train.synthetic import make_shapes_dataset, write_descriptions

    root = tmp_path_factory.mktemp("shapes")
    classes = make_shapes_dataset(root, per_split={"train": 8, "val": 4, "test": 4}, size=64, seed=0)
    files = write_descriptions(root, classes)
    return root, classes, files


def make_random_bundle(backbone, shapes_data, method: str, out, seed: int, **method_settings):
    """An untrained bundle of ``method`` with seeded random programs (and, for DVP, a random PRM)."""
    from pathlib import Path

    from dga.train.bundle import save_bundle
    from dga.train.config import MethodConfig
    from dga.train.data.descriptions import load_descriptions
    from dga.train.data.imagefolder import list_images
    from dga.train.data.images import eval_transform, open_rgb
    from dga.train.methods import PrepareContext, create

    root, classnames, files = shapes_data
    classnames = list(classnames)
    descriptions = {role: load_descriptions(path, classnames) for role, path in files.items()}
    transform = eval_transform(method_settings.get("s0", 192))
    items = [(p, classnames.index(Path(p).parent.name)) for p in list_images(root / "train")]

    def train_batches():
        for i in range(0, len(items), 24):
            chunk = items[i : i + 24]
            yield torch.stack([transform(open_rgb(p)) for p, _ in chunk]), torch.tensor([y for _, y in chunk])

    ctx = PrepareContext(backbone, classnames, MethodConfig(**method_settings), descriptions, train_batches, seed=1)
    model, cfg = create(ctx, method)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.stack.programs.copy_(torch.randn(model.stack.programs.shape, generator=g) * 2)
        if method.startswith("dvp"):
            prm = torch.rand(model.head.prm.shape, generator=g) + 0.05
            model.head.prm.copy_(prm / prm.sum(dim=1, keepdim=True))
    return save_bundle(out, model, cfg, classnames, training={})


@pytest.fixture(scope="session")
def tiny_package(backbone, shapes_data, tmp_path_factory):
    """A DGA deployment package (fp32 + fp16, max batch 8) exported from an untrained bundle."""
    from dga.export.package import ExportOptions, export_package

    base = tmp_path_factory.mktemp("tiny_package")
    bundle = make_random_bundle(backbone, shapes_data, "dga", base / "m.dga", 2024)
    opts = ExportOptions(max_batch=8, opt_batch=8, verify_batches=[1, 7])
    path, _ = export_package(bundle, base / "m.deploy", opts, log=lambda _line: None)
    return path
