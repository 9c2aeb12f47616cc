"""VP (overlay prompt), AR (padding prompt) and AttrVR (attribute descriptions, top-k mean)."""

from __future__ import annotations

from dga.train.heads import AttributeHead, TemplateHead, template_text
from dga.train.methods import NO_DESCRIPTIONS, MethodSpec, register, zero_programs
from dga.train.methods.common import sampled_description_text
from dga.train.views import View


def _single_view(cfg: dict) -> list[View]:
    return [View("global", (1.0,))]


def _prepare_template(ctx):
    text = template_text(ctx.backbone, ctx.classnames, ctx.config.template)
    return {}, {"stack.programs": zero_programs(1), "head.text": text}


def _prepare_vp(ctx):
    # The watermark prompt works on the full-size image: S0 is the encoder's own input size.
    ctx.config.s0 = ctx.backbone.info.image_size
    return _prepare_template(ctx)


def _template_head(cfg, t, scale):
    return TemplateHead(t["text"], scale)


register(MethodSpec(
    name="vp", summary="VP: watermark (overlay) prompt on a 30-px border, template text head",
    prompt_kind="overlay", description_roles=lambda c: NO_DESCRIPTIONS,
    prepare=_prepare_vp, views=_single_view, build_head=_template_head,
))

register(MethodSpec(
    name="ar", summary="AR: padding prompt around an S0 image, template text head",
    prompt_kind="pad", description_roles=lambda c: NO_DESCRIPTIONS,
    prepare=_prepare_template, views=_single_view, build_head=_template_head,
))


def _prepare_attrvr(ctx):
    des, des_s = sampled_description_text(ctx, "des")
    dist, dist_s = sampled_description_text(ctx, "dist", seed_offset=1)
    tensors = {"stack.programs": zero_programs(1), "head.des": des, "head.dist": dist}
    return {"sentences": {"des": des_s, "dist": dist_s}}, tensors


register(MethodSpec(
    name="attrvr", summary="AttrVR: padding prompt, top-k mean over DesAttr and DistAttr, alpha mix",
    prompt_kind="pad", description_roles=lambda c: ("des", "dist"),
    prepare=_prepare_attrvr, views=_single_view,
    build_head=lambda cfg, t, s: AttributeHead(t["des"], t["dist"], s, cfg["topk"], cfg["alpha"]),
))
