"""Shared fixtures: a tiny random-weight open_clip backbone and a generated dataset."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = "dga-test-vit-p32"  # registered by dga.train.backbone from train/model_configs/


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
