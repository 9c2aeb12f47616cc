"""Benchmarks (dga-bench): the papers' eager per-view loop vs the fused graph, model-only vs end-to-end."""
