"""Every formula of METHODS.md against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dga.train import fusion, prm
from dga.train.heads import AttributeHead, PrmHead, TemplateHead, mean_rule_text
from dga.train.hierarchy import build_hierarchy, class_prototypes, default_level_sizes, superclass_text
from dga.train.methods import dga as dga_method
from dga.train.methods.dvp import cluster_owner
from dga.train.prompts import apply_frame, effective_parameters, overlay_mask, pad_amounts, pad_mask
from dga.train.views import View, ViewStack, crop_resize, fixed_box

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


# -- prompts -----------------------------------------------------------------------------------
def test_pad_geometry_and_parameter_counts():
    assert pad_amounts(192) == (16, 16)
    assert pad_amounts(191) == (17, 16)  # left = floor((224 - 191 + 1) / 2), right = floor(33 / 2)
    assert effective_parameters("pad", 192) == 39_936 == 3 * (224**2 - 192**2)
    assert effective_parameters("overlay", 224) == 69_840 == 3 * (224**2 - 164**2)
    m = pad_mask(192)
    assert m[0, 15, 100] == 1 and m[0, 16, 16] == 0 and m[0, 207, 207] == 0 and m[0, 208, 100] == 1
    o = overlay_mask()
    assert o[0, 29, 100] == 1 and o[0, 30, 30] == 0 and o[0, 193, 193] == 0 and o[0, 194, 100] == 1


def test_pad_frame_starts_mid_grey_and_image_is_normalised():
    x = torch.full((1, 3, 192, 192), 0.25)
    frame = torch.sigmoid(torch.zeros(1, 3, 224, 224)) * pad_mask(192)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    out = apply_frame("pad", x, frame, mean, std)
    assert out.shape == (1, 3, 224, 224)
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx((0.5 - MEAN[c]) / STD[c], abs=1e-6)
        assert out[0, c, 100, 100].item() == pytest.approx((0.25 - MEAN[c]) / STD[c], abs=1e-6)


def test_overlay_adds_program_after_normalisation():
    x = torch.full((1, 3, 224, 224), 0.5)
    program = torch.full((1, 3, 224, 224), 2.0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    out = apply_frame("overlay", x, program * overlay_mask(), mean, std)
    assert out[0, 0, 0, 0].item() == pytest.approx((0.5 - MEAN[0]) / STD[0] + 2.0, abs=1e-6)
    assert out[0, 0, 112, 112].item() == pytest.approx((0.5 - MEAN[0]) / STD[0], abs=1e-6)


def test_view_stack_mixes_programs_before_sigmoid():
    programs = torch.stack([torch.full((3, 224, 224), 2.0), torch.full((3, 224, 224), -4.0)])
    views = [View("global", (0.5, 0.5)), View("b", (0.0, 1.0))]
    stack = ViewStack("pad", 192, views, programs, (0, 0, 0), (1, 1, 1)).eval()
    out = stack(torch.zeros(1, 3, 192, 192))
    assert out.shape == (2, 3, 224, 224)
    assert out[0, 0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(1.0)), abs=1e-6)  # sigmoid(-1)
    assert out[1, 0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(4.0)), abs=1e-6)


def test_fixed_crop_boxes_and_resize():
    assert fixed_box("center", 192, 160) == (16, 16)
    assert fixed_box("top-right", 192, 160) == (0, 32)
    assert fixed_box("bottom-left", 192, 128) == (64, 0)
    x = torch.zeros(1, 1, 8, 8)
    x[:, :, :4, :4] = 1.0
    out = crop_resize(x, 0, 0, 4)  # the top-left quarter, all ones, blown up to 8 x 8
    assert out.shape == (1, 1, 8, 8) and torch.allclose(out, torch.ones_like(out))


# -- heads ---------------------------------------------------------------------------------------
def test_template_head_is_scaled_cosine():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    f = torch.tensor([[[0.8, 0.6]]])  # [B=1, V=1, D=2], unit
    z = TemplateHead(text, 100.0)(f).logits
    assert torch.allclose(z, torch.tensor([[80.0, 60.0, 96.0]]))


def test_mean_rule_folds_to_mean_embedding():
    desc = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one class, two unit descriptions
    f = torch.tensor([0.6, 0.8])
    assert torch.allclose(f @ mean_rule_text(desc)[0], torch.tensor(0.7))  # mean(0.6, 0.8)


def test_topk_mean_and_attrvr_alpha_mix():
    scores = torch.tensor([[[1.0, 5.0, 3.0, 4.0], [0.0, -1.0, 2.0, 1.0]]])
    assert torch.allclose(fusion.topk_mean(scores, 3), torch.tensor([[4.0, 1.0]]))
    des = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])  # [C=2, m=2, D]
    dist = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    head = AttributeHead(des, dist, scale=10.0, k=1, alpha=0.25)
    f = torch.tensor([[[1.0, 0.0]]])
    # des: class0 top1 = 10, class1 top1 = 8; dist: class0 0, class1 10.
    assert torch.allclose(head(f).logits, torch.tensor([[0.25 * 10 + 0.75 * 0, 0.25 * 8 + 0.75 * 10]]))


# -- DVP ---------------------------------------------------------------------------------------------
def test_prm_counts_and_normalisation_with_unused_description():
    # C = 2 classes, M' = 4 descriptions each, k = 2.
    scores = torch.tensor([
        [[9.0, 8.0, 1.0, 0.0], [0, 0, 0, 0]],  # y=0: top2 = {0, 1}
        [[7.0, 1.0, 8.0, 0.0], [0, 0, 0, 0]],  # y=0: top2 = {2, 0}
        [[0, 0, 0, 0], [1.0, 2.0, 3.0, 4.0]],  # y=1: top2 = {3, 2}
    ])
    y = torch.tensor([0, 0, 1])
    counts = prm.topk_counts(scores, y, k=2)
    assert counts.tolist() == [[2, 1, 1, 0], [0, 0, 1, 1]]
    omega = prm.estimate_prm(counts, torch.tensor([2, 1]), k=2)
    # omega[c, v] = n[c, v] / (k * N_c); description 3 of class 0 was never in a top-k -> 0.
    assert torch.allclose(omega, torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.5, 0.5]]))
    assert torch.allclose(omega.sum(1), torch.ones(2))
    assert torch.allclose(prm.initial_prm(2, 4), torch.full((2, 4), 0.25))


def test_prm_logits_equal_folded_heads():
    torch.manual_seed(0)
    c, mp, d, v = 3, 4, 5, 2
    desc = torch.nn.functional.normalize(torch.randn(c, mp, d), dim=-1)
    owner = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 1, 1]])
    omega = torch.rand(c, mp)
    head = PrmHead(desc, owner, omega, scale=7.0)
    feats = torch.nn.functional.normalize(torch.randn(4, v, d), dim=-1)
    out = head(feats)
    # By hand: S[b, c, m] = 7 * f[b, owner[c, m]] . desc[c, m]; z = sum_m S * omega.
    s = torch.stack([torch.stack([torch.stack([7 * feats[b, owner[ci, m]] @ desc[ci, m] for m in range(mp)])
                                  for ci in range(c)]) for b in range(4)])
    assert torch.allclose(out.scores, s, atol=1e-5)
    assert torch.allclose(out.logits, (s * omega).sum(-1), atol=1e-5)
    w = head.folded(v)
    assert torch.allclose(7 * torch.einsum("bvd,vdc->bc", feats, w), out.logits, atol=1e-5)


def test_dvp_cls_groups_descriptions_by_kmeans_cluster():
    # Two well-separated directions; every class has 2 descriptions near each.
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    desc = torch.stack([torch.stack([a, b + 0.01, a + 0.02, b]) for _ in range(3)])
    owner = cluster_owner(desc, 2)
    first = owner[0, 0].item()
    expected = torch.tensor([first, 1 - first, first, 1 - first]).expand(3, 4)
    assert torch.equal(owner, expected)


def test_dvp_cse_layout_is_cause_major_within_class():
    # index c * M' + i * m + j: owner of description (i, j) is cause i.
    m, k = 2, 3
    owner = torch.arange(k).repeat_interleave(m)
    assert owner.tolist() == [0, 0, 1, 1, 2, 2]


# -- DGA ---------------------------------------------------------------------------------------------
def test_default_level_sizes():
    assert default_level_sizes(16, 2) == [4, 2]  # 16/4 = 4, max(2, round(1)) = 2
    assert default_level_sizes(100, 2) == [25, 6]  # round(6.25) = 6
    assert default_level_sizes(6, 2) == [2]  # round(1.5) = 2; level 2 would not be smaller
    assert default_level_sizes(2, 2) == []
    assert default_level_sizes(40, 3) == [10, 3, 2]  # round(2.5) = 3 (half up), max(2, round(0.625))


def test_plh_recovers_known_cluster_structure():
    # Four tight groups of two classes; groups {0,1} and {2,3} close, {4,5} and {6,7} close.
    centres = np.array([[0, 0], [1, 0], [3, 0], [4, 0], [0, 20], [1, 20], [3, 20], [4, 20]], float)
    h = build_hierarchy(centres, [4, 2])
    assert h.parents[0] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert h.parents[1] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(h.linkage) == 7


def test_class_prototypes_are_means_of_unit_features():
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    protos = class_prototypes(feats, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(protos, torch.tensor([[0.5, 0.5], [0.0, -1.0]]))


def test_superclass_text_is_normalised_mean():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    s = superclass_text(t, [0, 0, 1], 2)
    r = 1 / math.sqrt(2)
    assert torch.allclose(s, torch.tensor([[r, r], [0.0, 1.0]]), atol=1e-6)


def test_hkp_expansion_redistribution_aggregation():
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # softmax = 1/4 each
    lvl1 = torch.tensor([[2.0, 4.0]])
    lvl2 = torch.tensor([[8.0]])
    p1, p2 = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0])
    assert fusion.hkp_expand(lvl1, p1).tolist() == [[2.0, 2.0, 4.0, 4.0]]
    z_sg = fusion.hkp(z, [lvl1, lvl2], [p1, p2])
    # r1 = [0.5, 0.5, 1, 1], r2 = [2, 2, 2, 2]; mean = [1.25, 1.25, 1.5, 1.5]
    assert torch.allclose(z_sg, torch.tensor([[1.25, 1.25, 1.5, 1.5]]))


def test_upf_weights_by_entropy_and_all_uncertain_fallback():
    ln2 = math.log(2)
    confident = torch.tensor([100.0, 0.0])  # entropy ~ 0
    uniform = torch.tensor([0.0, 0.0])  # entropy ln 2
    views = torch.stack([confident, uniform]).unsqueeze(0)  # [B=1, J=2, C=2]
    w = fusion.upf_weights(views, h0=1.2)
    expected = torch.tensor([1.2, 1.2 - ln2]) / (2.4 - ln2)
    assert torch.allclose(w[0], expected, atol=1e-5)
    assert torch.allclose(fusion.upf(views, 1.2)[0], expected[0] * confident + expected[1] * uniform, atol=1e-4)
    # All views uncertain (entropy ln 4 = 1.386 > H0 = 1.2): plain mean, no division by zero.
    flat = torch.zeros(1, 3, 4)
    flat[0, 1] = 0.01
    w = fusion.upf_weights(flat, h0=1.2)
    assert torch.allclose(w, torch.full((1, 3), 1 / 3))
    assert torch.isfinite(fusion.upf(flat, 1.2)).all()
    assert torch.allclose(fusion.upf(views, 1.2, weighted=False), views.mean(1))


def test_visual_granularity_lambda_and_alpha():
    z, e1, e2 = torch.tensor([3.0]), torch.tensor([6.0]), torch.tensor([0.0])
    assert fusion.visual_granularity(z, [e1, e2]).item() == pytest.approx(3.0)
    assert fusion.lambda_fuse(torch.tensor([10.0]), torch.tensor([0.0]), 0.7).item() == pytest.approx(3.0)
    assert fusion.alpha_mix(torch.tensor([4.0]), torch.tensor([0.0]), 0.5).item() == pytest.approx(2.0)


def test_losses():
    c = 4
    z = torch.zeros(2, c)
    y = torch.tensor([0, 3])
    assert fusion.hierarchical_loss(z, [], [], y).item() == pytest.approx(math.log(4))
    lvl = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    parent = torch.tensor([0, 0, 1, 1])
    # CE(z, y) + (1/1) * CE(level, parent[y]) = ln 4 + ln 2
    assert fusion.hierarchical_loss(z, [lvl], [parent], y).item() == pytest.approx(math.log(4) + math.log(2))
    lvl2 = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])  # sample 0: p(parent=0) = 3/4
    want = math.log(4) + 0.5 * ((-math.log(0.75) + math.log(2)) / 2 + math.log(2))
    got = fusion.hierarchical_loss(z, [lvl2, lvl], [parent, parent], y).item()
    assert got == pytest.approx(want, abs=1e-6)


def _dga_cfg(**kw):
    cfg = {"s0": 192, "scales": 2, "crop_step": 32, "crops": 2, "h0": 1.2, "lam": 0.7,
           "hkp": True, "sg": True, "upf": True, "vg": True,
           "hierarchy": {"level_sizes": [2], "parents": [[0, 0, 1, 1]], "linkage": []}}
    cfg.update(kw)
    return cfg


def test_dga_views_defaults():
    cfg = _dga_cfg(hierarchy={"level_sizes": [4, 2], "parents": [[0] * 8, [0] * 8], "linkage": []})
    views = dga_method.views(cfg)
    assert len(views) == 1 + 2 + 2 * 2  # V = 1 + L + E * J = 7
    assert views[0].mix == (1 / 3, 1 / 3, 1 / 3, 0.0, 0.0)  # HKP: average of delta_0..delta_L
    assert views[1].mix == (0.0, 1.0, 0.0, 0.0, 0.0)
    assert [(v.side, v.box) for v in views[3:]] == [(160, (16, 16)), (160, (0, 0)), (128, (32, 32)), (128, (0, 0))]
    assert views[5].mix == (0.0, 0.0, 0.0, 0.0, 1.0)
    no_hkp = dga_method.views({**cfg, "hkp": False})
    assert no_hkp[0].mix == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert len(dga_method.views({**cfg, "sg": False})) == 5  # no level prompts or views
    assert len(dga_method.views({**cfg, "vg": False})) == 3  # no crops


def test_dga_head_fusion_by_hand():
    # C = 4, one level with parents [0, 0, 1, 1], E = 1 scale, J = 2 crops; D = 4 (one-hot texts).
    cfg = _dga_cfg(scales=1)
    t0 = torch.eye(4)
    t1 = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    head = dga_method.DgaHead(cfg, t0, [t1], scale=1.0)
    f = torch.tensor([[[1.0, 0, 0, 0],  # global -> z = [1, 0, 0, 0]
                       [0, 0, 1.0, 0],  # level -> z1 = [0, 1]
                       [0, 1.0, 0, 0],  # crop 1 -> [0, 1, 0, 0]
                       [0, 1.0, 0, 0]]])  # crop 2 -> same: UPF of equal views = the view
    out = head(f)
    z = torch.tensor([1.0, 0, 0, 0])
    z_vg = (z + torch.tensor([0.0, 1, 0, 0])) / 2
    z_sg = torch.tensor([0.0, 0, 1, 1]) * torch.softmax(z, 0)
    assert torch.allclose(out.logits[0], 0.3 * z_vg + 0.7 * z_sg, atol=1e-6)
    assert torch.allclose(out.level_logits[0], torch.tensor([[0.0, 1.0]]))
    no_hkp = dga_method.DgaHead({**cfg, "hkp": False}, t0, [t1], scale=1.0)(f)
    assert torch.allclose(no_hkp.logits[0], 0.3 * z_vg + 0.7 * torch.tensor([0.0, 0, 1, 1]), atol=1e-6)
