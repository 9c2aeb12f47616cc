"""Baselines in plain PyTorch that the fused graph is measured against.

- ``PerViewLoop``: the papers' way, an eager loop that runs the encoder once per view;
- ``StackedViews``: the best a user would write in torch: the trained model's own forward, all V
  views of a batch stacked into one encoder call through open_clip's encoder
  (nn.MultiheadAttention's fast path, torch's fused attention kernels), optionally under
  ``torch.compile`` (``compile_module``, bounded in time).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import torch
from torch.nn import functional as F

from dga.train.model import ReprogramModel


class PerViewLoop(torch.nn.Module):
    """Same numbers as the fused module, but V separate encoder calls of batch B each."""

    def __init__(self, model: ReprogramModel):
        super().__init__()
        self.model = model.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from dga.train.prompts import apply_frame

        x = images.permute(0, 3, 1, 2).float() / 255.0
        stack = self.model.stack
        frames = stack.frames()
        feats = []
        for i, xv in enumerate(stack.view_images(x)):
            inp = apply_frame(stack.kind, xv, frames[i:i + 1], stack.mean, stack.std, stack.size, stack.s0)
            feats.append(F.normalize(self.model.backbone.encode_image(inp).float(), dim=-1))
        return self.model.head(torch.stack(feats, dim=1)).logits


class StackedViews(torch.nn.Module):
    """uint8 [B, S0, S0, 3] -> logits [B, C]: the trained model's forward, one encoder pass over B * V."""

    def __init__(self, model: ReprogramModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return self.model(x).logits


class CompileTimeout(Exception):
    """torch.compile's first call took longer than the time it was given."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CompileTimeout in this (main) thread after ``seconds``; where signals cannot be used
    (not the main thread, no SIGALRM), run unbounded."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def expire(signum, frame):
        raise CompileTimeout(f"did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed_out(exc: BaseException) -> str | None:
    """The CompileTimeout message when ``exc`` is one or wraps one (inductor re-raises it as its own), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CompileTimeout):
            return str(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def compile_module(module: torch.nn.Module, examples: list[torch.Tensor], timeout_s: float) -> tuple[object, dict]:
    """``torch.compile(module, dynamic=True)`` and its first call on each example input (where compiling
    happens: batch 1 is specialised by torch, a second size gives the graph every other size reuses).

    Returns (the compiled module or None, facts): ``compile_s`` and, when compiling failed or ran
    past ``timeout_s``, ``error``: one line saying why. A compile that fails leaves no trace in
    the process (dynamo's caches are reset) so the other configurations run as before.
    """
    import torch._inductor.config as inductor_config

    start = time.perf_counter()
    facts: dict = {"timeout_s": timeout_s}
    threads = inductor_config.compile_threads
    try:
        # Compile in this process: a pool of compile workers would take the cores the other
        # configurations are timed on, and could outlive a compile that is cut short.
        inductor_config.compile_threads = 1
        # A dynamic batch dimension: past batch 1 (which torch specialises), one graph serves every
        # batch size; with the default, the first two sizes would each compile a graph of their own.
        compiled = torch.compile(module, dynamic=True)
        with time_limit(timeout_s), torch.no_grad():
            for x in examples:
                compiled(x)
    except Exception as exc:  # a timeout, a missing C++ compiler, an unsupported op: recorded, not fatal
        timeout = timed_out(exc)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        facts.update(error=f"torch.compile {timeout}" if timeout else
                     f"torch.compile failed: {type(exc).__name__}: {first}",
                     compile_s=round(time.perf_counter() - start, 1))
        torch._dynamo.reset()
        return None, facts
    finally:
        inductor_config.compile_threads = threads
    facts["compile_s"] = round(time.perf_counter() - start, 1)
    return compiled, facts
