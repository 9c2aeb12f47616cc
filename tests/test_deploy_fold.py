"""The deployment module's two graph-level rewrites keep the trained numbers.

- patch-embedding folding: P(Pad(x / std) + bias_v) == PadTokens(P'(x)) + P(bias_v);
- ExportAttention: a batch-first re-statement of nn.MultiheadAttention with the same weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_random_bundle
from torch import nn


def _stack(kind: str, s0: int) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, s0=s0, size=224)


def test_foldable_geometry():
    from dga.export.deploy_module import foldable_padding

    patch16 = nn.Conv2d(3, 8, 16, 16, bias=False)
    assert foldable_padding(_stack("pad", 192), patch16) == (16, 16)
    assert foldable_padding(_stack("pad", 201), patch16) == (12, 11)
    assert foldable_padding(_stack("pad", 224), patch16) == (0, 0)
    assert foldable_padding(_stack("overlay", 224), patch16) == (0, 0)
    assert foldable_padding(_stack("overlay", 192), patch16) is None
    assert foldable_padding(_stack("pad", 192), nn.Conv2d(3, 8, 16, 8)) is None  # overlapping patches
    assert foldable_padding(_stack("pad", 192), nn.Conv2d(3, 8, 16, 16, padding=1)) is None
    assert foldable_padding(_stack("pad", 192), nn.Identity()) is None


def test_folding_equals_direct_path_on_a_hand_made_case():
    """One 2-px 'image', patch 2, pad 2 px each side in a 6-px frame: PadTokens(P'(x)) + P(b) by hand."""
    from dga.train.prompts import apply_frame

    w = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).repeat(1, 3, 1, 1)  # one output channel, 3 input channels
    std = torch.tensor([0.5, 0.25, 1.0]).reshape(3, 1, 1)
    mean = torch.zeros(3, 1, 1)
    x = torch.full((1, 3, 2, 2), 51.0)  # raw pixels: 51 / 255 = 0.2
    frame = torch.zeros(1, 3, 6, 6)
    frame[..., 0, 0] = 1.0  # one frame pixel at the top-left corner, all channels
    direct = nn.functional.conv2d(apply_frame("pad", x / 255.0, frame, mean, std, 6, 2), w, stride=2)
    # By hand: centre token = sum over channels of 0.2 / std_c * (1 + 2 + 3 + 4) = 0.2 * 10 * (2 + 4 + 1) = 14;
    # the corner token sees only the frame pixel under weight 1: sum_c 1 / std_c = 7; every other token 0.
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 1, 1], expected[0, 0, 0, 0] = 14.0, 7.0
    torch.testing.assert_close(direct, expected)
    folded_w = w / (255.0 * std.reshape(1, 3, 1, 1))
    tokens = nn.functional.pad(nn.functional.conv2d(x, folded_w, stride=2), (1, 1, 1, 1))
    token_bias = nn.functional.conv2d((frame - mean) / std, w, stride=2)
    torch.testing.assert_close(tokens + token_bias, expected)


@pytest.fixture(scope="module")
def backbone_p16():
    from dga.train.backbone import load_backbone

    return load_backbone("dga-test-vit-p16", None, seed=0)


# patch 32 with S0 = 192: 16 px of padding is half a patch (the convolution pads); patch 16: one patch.
@pytest.mark.parametrize("method,patch,s0", [("vp", 32, 224), ("dga", 32, 192), ("dga", 16, 192), ("ar", 32, 177)])
def test_folded_module_matches_unfolded_and_model(method, patch, s0, backbone, backbone_p16, shapes_data, tmp_path,
                                                 monkeypatch):
    from dga.export import deploy_module
    from dga.train.bundle import load_bundle
    from dga.train.synthetic import sample_images

    net = backbone if patch == 32 else backbone_p16
    settings = {"s0": s0} if method == "ar" else {}  # an odd S0: asymmetric padding (24 px before, 23 after)
    bundle = load_bundle(make_random_bundle(net, shapes_data, method, tmp_path / "m.dga", 7, **settings))
    model = bundle.model.eval()
    assert bundle.manifest["input"]["s0"] == s0 and model.backbone.clip.visual.conv1.stride[0] == patch
    images = torch.from_numpy(sample_images(5, s0, seed=2))
    folded = deploy_module.DeployModule(model, "fp32").eval()
    assert folded.token_padding == ((224 - s0 + 1) // 2, (224 - s0) // 2)
    assert not hasattr(folded, "biases") and isinstance(folded.encoder.conv1, nn.Identity)
    monkeypatch.setattr(deploy_module, "foldable_padding", lambda stack, conv: None)
    direct = deploy_module.DeployModule(model, "fp32").eval()
    assert direct.token_padding is None
    with torch.no_grad():
        reference = model(images.permute(0, 3, 1, 2).float() / 255.0).logits
        for module in (folded, direct):
            logits, probs = module(images)
            torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(probs.sum(1), torch.ones(5))
    # The exported graph keeps a dynamic batch on every path (a traced size must not become a constant).
    import onnxruntime as ort

    from dga.export.onnx_export import export_onnx

    path = export_onnx(folded, tmp_path / "folded.onnx", {}, example_batch=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        logits = session.run(["logits"], {"images": images[:batch].numpy()})[0]
        np.testing.assert_allclose(logits, reference[:batch].numpy(), atol=1e-4)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_export_attention_equals_multihead_attention(batch_first, mask):
    from dga.export.attention import ExportAttention, export_friendly

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)  # causal: True = masked
    elif mask == "float":
        attn_mask = torch.randn(5, 5)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
        got, weights = ExportAttention(mha)(x, x, x, need_weights=False, attn_mask=attn_mask)
    assert weights is None
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    holder = nn.Sequential(nn.Sequential(mha), nn.MultiheadAttention(16, 4, bias=False))
    assert export_friendly(holder) == 1 and isinstance(holder[0][0], ExportAttention)
    assert isinstance(holder[1], nn.MultiheadAttention)  # unsupported forms stay as they are
