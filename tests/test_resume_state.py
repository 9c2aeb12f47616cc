"""No file the toolkit reads can run code: the resume state is safetensors + JSON, weight files are not unpickled.

Each malicious file here is a real pickle whose ``__reduce__`` creates a marker file when it is
unpickled (checked at the end of the first test, so the refusals below are not vacuous).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dga.errors import BackboneError, ConfigError
from dga.train.config import MethodConfig, TrainConfig
from dga.train.resume import as_stored, load_state, save_state
from dga.train.run import TrainJob, run_training
from dga.train.trainer import LEGACY_STATE_FILE, STATE_FILE

TINY = "dga-test-vit-p32"


class Plant:
    """Unpickling this calls open(marker, "w"): the marker file appearing means code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"epoch": 1, "model": {"stack.programs": torch.zeros(1)}, "payload": Plant(marker)}, path)
    return path


def job(shapes_data, tmp_path: Path, out: Path) -> TrainJob:
    return TrainJob(data=shapes_data[0], out=out, method="ar", backbone=TINY, pretrained=None, shots=2,
                    splits_dir=tmp_path / "splits", method_cfg=MethodConfig(),
                    train_cfg=TrainConfig(epochs=1, batch_size=9, seed=0, device="cpu"),
                    resume=True, plots=False, progress=False)


def test_a_pickled_resume_state_is_refused_unread(shapes_data, tmp_path):
    out = tmp_path / "m.dga"
    work = out.with_name(out.name + ".work")
    work.mkdir()
    marker = tmp_path / "code-ran"
    malicious_checkpoint(work / LEGACY_STATE_FILE, marker)
    with pytest.raises(ConfigError) as info:
        run_training(job(shapes_data, tmp_path, out))
    msg = str(info.value)
    assert "\n" not in msg and str(work / LEGACY_STATE_FILE) in msg
    assert "pickled resume state" in msg and "drop --resume" in msg
    assert not marker.exists(), "the pickle was unpickled"
    assert not out.exists()
    # the file really is malicious: the loader the trainer used to call runs its code
    torch.load(work / LEGACY_STATE_FILE, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_a_pickle_under_the_state_name_is_refused_unread(shapes_data, tmp_path):
    out = tmp_path / "m.dga"
    work = out.with_name(out.name + ".work")
    work.mkdir()
    marker = tmp_path / "code-ran"
    malicious_checkpoint(work / STATE_FILE, marker)
    with pytest.raises(ConfigError) as info:
        run_training(job(shapes_data, tmp_path, out))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{work / STATE_FILE} cannot be read as a dga resume state")
    assert "drop --resume" in msg
    assert not marker.exists()


def test_other_safetensors_files_are_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "something-else"})
    with pytest.raises(ConfigError, match="is a safetensors file but not a dga resume state: drop --resume"):
        load_state(path)
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "dga-resume-state", "version": "1",
                                                           "state": '{"model": {"$tensor": "/absent"}}'})
    with pytest.raises(ConfigError, match="holds a damaged resume state"):
        load_state(path)
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(ConfigError, match="cannot be read as a dga resume state"):
        load_state(path)


def test_state_round_trip(tmp_path):
    """What the trainer stores: tensors, SGD state (integer keys), scheduler, scaler, metrics."""
    programs = torch.nn.Parameter(torch.arange(6.0).view(2, 3))
    opt = torch.optim.SGD([programs], lr=40.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5)
    programs.grad = torch.full((2, 3), 0.25)
    opt.step()
    sched.step()
    state = {"fingerprint": {"backbone": ("ViT-B-16", None), "config": {"level_sizes": [4, 2]}},
             "epoch": 3, "model": {"stack.programs": programs.detach()}, "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "scaler": {}, "metrics": [{"epoch": 1, "val_acc": None, "lr": 0.1}],
             "best": {"acc": -1.0, "epoch": -1, "state": None}}
    path = tmp_path / STATE_FILE
    save_state(path, state)
    got = load_state(path)
    # LambdaLR applies its factor from the start: the step ran at lr 40 * 0.5 = 20, moving 20 * 0.25 = 5
    assert torch.equal(got["model"]["stack.programs"], torch.arange(6.0).view(2, 3) - 5.0)
    # SGD's first momentum buffer is the gradient; its state is keyed by parameter index 0
    assert torch.equal(got["optimizer"]["state"][0]["momentum_buffer"], torch.full((2, 3), 0.25))
    assert got["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    assert got["scheduler"] == sched.state_dict()
    assert got["metrics"] == state["metrics"] and got["best"] == state["best"] and got["epoch"] == 3
    assert got["fingerprint"] == as_stored(state["fingerprint"]) == {"backbone": ["ViT-B-16", None],
                                                                      "config": {"level_sizes": [4, 2]}}
    # the optimizer accepts it back
    fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2, 3))], lr=40.0, momentum=0.9)
    fresh.load_state_dict(got["optimizer"])
    # the non-tensor part is plain JSON in the safetensors header
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["state"])["epoch"] == 3
    with pytest.raises(TypeError, match="Plant at '/payload'"):
        save_state(tmp_path / "bad.safetensors", {"payload": Plant(tmp_path / "never")})


def test_a_pickled_weight_file_is_not_unpickled(tmp_path):
    """--pretrained FILE: open_clip's loader is called with weights_only=True."""
    from dga.train.backbone import load_backbone

    marker = tmp_path / "code-ran"
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": {"logit_scale": torch.zeros(())}, "payload": Plant(marker)}, weights)
    with pytest.raises(BackboneError) as info:
        load_backbone(TINY, str(weights))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"could not load backbone {TINY}: the weight file '{weights}' holds "
                                              "more than tensors (it refers to ")
    assert msg.endswith("save its state_dict alone, or as .safetensors")
    assert not marker.exists()
