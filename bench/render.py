"""Render the manual's results page from the measured results in ``bench/results/`` (stdlib only).

    python -m dga.bench.render --out docs/benchmarks/results.md          # write the page
    python -m dga.bench.render --out docs/benchmarks/results.md --check  # exit 1 if the page is stale

Three kinds of JSON file are recognised by their keys:

- ``dga-bench`` speed results (``NAME.json`` with ``rows`` and ``limit``, written by bench/run.py);
- ``dga-compare`` accuracy results (``DIR/results.json`` with ``settings`` and ``runs``, bench/methods.py);
- pretraining replays of the shipped backbone (``DIR/run.json`` of ``python -m dga.train.pretrain``,
  with ``compare.json`` beside it when ``--compare-to`` was given);
- preprocessing parity (``preprocess-parity.json`` of ``python -m dga.bench.preprocess_parity``: pixel
  differences and top-1 flips between the eval transform, JPEG draft decoding and torchvision).

Each table names its JSON file and the command that made it: the command recorded in the JSON
(``command`` or ``argv``) where there is one, otherwise one rebuilt from the settings the JSON
records, marked as such. The page holds nothing but what the files hold, so it is current exactly
when it equals what this module renders from them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from dga.fsutil import write_or_check_generated

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_LABEL = "bench/results"  # how the default results folder is named on the page
REGENERATE = "python -m dga.bench.render --out docs/benchmarks/results.md"
SKIP_DIRS = {"data", "bundles", "splits"}  # dga-compare's working folders (not results)
EAGER = "eager per-view loop (papers)"  # the kinds of dga-bench rows (bench/run.py)
FUSED_TORCH = "fused, one encoder pass"
STACKED = "views stacked, open_clip encoder"
ONNX = "fused ONNX graph"
# The rows of dga-compare in the order of its table (bench/methods.py: ROWS); others follow as stored.
ROW_ORDER = ("zero-shot", "VP", "AR", "AttrVR", "DVP-cse", "DVP-cls", "DGA", "DGA w/o HKP", "DGA w/o SG",
             "DGA w/o UPF", "DGA w/o VG")


# -- finding and classifying files ----------------------------------------------------------------

def kind_of(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    if data.get("suite") == "serve" and "rows" in data:
        return "serve"
    if "rows" in data and "limit" in data and "machine" in data:
        return "bench"
    if "settings" in data and "runs" in data:
        return "compare"
    if "command" in data and "zero_shot" in data and "steps" in data:
        return "pretrain"
    if isinstance(data.get("sets"), dict) and "size" in data:
        return "parity"
    return None


def find_results(root: Path) -> dict[str, list[tuple[Path, dict]]]:
    """Recognised JSON files under ``root`` by kind, each list in a stable order."""
    found: dict[str, list[tuple[Path, dict]]] = {"compare": [], "bench": [], "serve": [], "parity": [],
                                                 "pretrain": []}
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        kind = kind_of(data)
        if kind:
            found[kind].append((path, data))
    found["bench"].sort(key=lambda item: (str(item[1].get("date", "")), item[0].name), reverse=True)
    return found


# -- formatting helpers ---------------------------------------------------------------------------

def cell(text: object) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def num(value: object, fmt: str = ".1f") -> str:
    return "–" if not isinstance(value, int | float) else format(value, fmt)


def pct(value: object, digits: int = 0) -> str:
    return "–" if not isinstance(value, int | float) else f"{100 * value:.{digits}f} %"


def pcts(values: object) -> str:
    if not isinstance(values, list) or not values:
        return "–"
    return ", ".join("?" if v is None else f"{100 * v:.0f}" for v in values) + " %"


def shell(argv: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def recorded_command(data: dict) -> str | None:
    cmd = data.get("command") or data.get("argv")
    if isinstance(cmd, list):
        return shell(cmd)
    return cmd if isinstance(cmd, str) and cmd.strip() else None


def repo_path(path: str) -> str:
    """A path recorded in a JSON, shown relative to the repository where it points inside one."""
    marker = "/bench/results/"
    p = str(path).replace("\\", "/")
    if marker in p:
        return "bench/results/" + p.split(marker, 1)[1]
    return p


def command_lines(data: dict, rebuilt: list[str]) -> list[str]:
    cmd = recorded_command(data)
    if cmd:
        return ["Command (as recorded in the JSON):", "", "```bash", cmd, "```", ""]
    return ["Command (rebuilt from the settings the JSON records; the JSON does not record the command line):",
            "", "```bash", shell(rebuilt), "```", ""]


def machine_text(m: dict) -> str:
    if not isinstance(m, dict):
        return cell(m)
    parts = []
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    cpu = m.get("cpu_model") or m.get("cpu") or m.get("processor")
    if cpu:
        parts.append(f"CPU {cpu}" + (f" × {m['cpu_count']}" if m.get("cpu_count") else ""))
    if m.get("platform"):
        parts.append(m["platform"])
    for lib in ("python", "torch", "torchvision", "cuda", "onnxruntime", "tensorrt", "numpy", "pillow", "libjpeg"):
        if m.get(lib):
            parts.append(f"{lib} {m[lib]}")
    threads = m.get("torch_threads") or m.get("threads")
    if threads:
        parts.append(f"{threads} torch threads")
    if m.get("onnxruntime_providers"):
        parts.append("providers " + ", ".join(m["onnxruntime_providers"]))
    return "; ".join(parts)


# -- dga-compare ----------------------------------------------------------------------------------

def _seeds(runs: dict) -> list[int]:
    return sorted({int(k.rsplit("|", 1)[1]) for k in runs if "|" in k and k.rsplit("|", 1)[1].isdigit()})


def _rows(runs: dict) -> list[str]:
    stored: list[str] = []
    for key in runs:
        name = key.rsplit("|", 1)[0]
        if name not in stored:
            stored.append(name)
    return [r for r in ROW_ORDER if r in stored] + [r for r in stored if r not in ROW_ORDER]


def render_compare(path: Path, data: dict, shown: str) -> list[str]:
    s, runs = data["settings"], data["runs"]
    seeds, rows = _seeds(runs), _rows(runs)
    folder = path.parent
    rebuilt = ["dga-compare", "--out", shown.rsplit("/", 1)[0]]
    data_dir = repo_path(s.get("data", ""))
    if data_dir and data_dir != f"{rebuilt[2]}/data":
        rebuilt += ["--data", data_dir]
    rebuilt += ["--seeds", ",".join(map(str, seeds))]
    for key, opt in (("shots", "--shots"), ("epochs", "--epochs"), ("lr", "--lr"), ("batch_size", "--batch-size"),
                     ("crop_scale", "--crop-scale"), ("backbone", "--backbone"), ("pretrained", "--pretrained"),
                     ("template", "--template")):
        if s.get(key) is not None:
            rebuilt += [opt, str(s[key])]
    lines = [f"### {folder.name}", "", f"File: `{shown}`", ""]
    lines += command_lines(data, rebuilt)
    if data.get("machine"):
        lines += [f"Machine: {machine_text(data['machine'])}.", ""]
    lines += [f"Test accuracy (%) on `{data_dir}`, {s.get('shots')} shots, backbone {s.get('backbone')} "
              f"({s.get('pretrained')}), {s.get('epochs')} epochs, lr {s.get('lr')}, batch {s.get('batch_size')}, "
              f"crop scale {s.get('crop_scale')}; template {s.get('template') or 'of the benchmark'}; "
              f"seeds {', '.join(map(str, seeds))}.", ""]
    head = ["method", *(f"seed {x}" for x in seeds), "mean ± std", "vs zero-shot", "best val (mean)",
            "train s/run"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    zero = [runs[f"zero-shot|{x}"]["test_acc"] for x in seeds if f"zero-shot|{x}" in runs]
    zero_mean = statistics.fmean(zero) if zero else None
    for row in rows:
        got = [runs.get(f"{row}|{x}") for x in seeds]
        accs = [r["test_acc"] for r in got if r and isinstance(r.get("test_acc"), int | float)]
        if not accs:
            continue
        mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        vals = [r["val_acc"] for r in got if r and isinstance(r.get("val_acc"), int | float)]
        times = [r["train_s"] for r in got if r and isinstance(r.get("train_s"), int | float)]
        delta = "" if row == "zero-shot" or zero_mean is None else f"{mean - zero_mean:+.1f}"
        cells = [cell(row), *("–" if not r else num(r.get("test_acc")) for r in got), f"{mean:.1f} ± {std:.1f}",
                 delta, num(statistics.fmean(vals)) if vals else "", f"{statistics.fmean(times):.0f}" if times else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    levels: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        for x in seeds:
            for lv in runs.get(f"{row}|{x}", {}).get("levels") or []:
                levels.setdefault((row, lv.get("level")), []).append(lv)
    if levels:
        lines += ["Hierarchy levels of the DGA rows, mean over the seeds: accuracy (%) of the level head, and of "
                  "the super-class implied by the final prediction:", "",
                  "| method | level | groups | level head | implied by final prediction |",
                  "|---|---:|---:|---:|---:|"]
        for (row, level), lvls in levels.items():
            groups = sorted({lv.get("groups") for lv in lvls}, key=str)
            head = [lv["level_head_accuracy"] for lv in lvls if isinstance(lv.get("level_head_accuracy"), int | float)]
            implied = [lv["implied_accuracy"] for lv in lvls if isinstance(lv.get("implied_accuracy"), int | float)]
            lines.append(f"| {cell(row)} | {level} | {', '.join(map(str, groups))} | "
                         f"{num(statistics.fmean(head)) if head else '–'} | "
                         f"{num(statistics.fmean(implied)) if implied else '–'} |")
        lines.append("")
    return lines


# -- dga-bench ------------------------------------------------------------------------------------

# The targets a real-size CPU run is judged against (docs/benchmarks/index.md explains each).
TARGET_VS_EAGER = 1.0  # fused ONNX fp32 against the eager loop, at every batch size
TARGET_ROOFLINE = 0.90  # fused ONNX fp32: share of the measured matmul peak
TARGET_OF_CEILING = 0.95  # end-to-end: share of the shared-core ceiling


def _eager(rows: list[dict]) -> dict[int, float]:
    """images/s of the eager loop by batch size: the baseline of the speed-up columns (one device per run)."""
    return {r["batch"]: r["images_per_s"] for r in rows if r.get("kind") == EAGER}


def vs_eager(row: dict, eager: dict[int, float]) -> float | None:
    """Speed of a row over the eager loop: the median of the rounds' own ratios where recorded (newer
    files), otherwise the ratio of the medians."""
    ratio = row.get("vs_eager")
    if isinstance(ratio, dict) and isinstance(ratio.get("median"), int | float):
        return ratio["median"]
    base = eager.get(row["batch"])
    return row["images_per_s"] / base if base else None


def roofline(row: dict, lim: dict) -> float | None:
    """The row's FLOP/s (encoder FLOPs per image x images/s) over the measured matmul peak."""
    if isinstance(row.get("roofline"), int | float):
        return row["roofline"]
    try:
        return row["images_per_s"] * lim["encoder_flops_per_view"] * lim["views"] / lim["peak_matmul_flops_per_s"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def bench_rebuilt(path: Path, data: dict, shown: str) -> list[str]:
    rows = data["rows"]
    batches = sorted({r["batch"] for r in rows})
    kinds = {(r.get("kind"), str(r.get("backend", "")).endswith("compiled")) for r in rows}
    backends = [b for b, kind in (("torch", (FUSED_TORCH, False)), ("torch-stacked", (STACKED, False)),
                                  ("torch-compile", (STACKED, True)), ("onnxruntime", (ONNX, False)))
                if kind in kinds]
    precisions = list(dict.fromkeys(r["precision"] for r in rows if r.get("kind") == ONNX))
    built = data.get("bundle_built")
    source = (["--backbone", str(built.get("backbone"))] if isinstance(built, dict)
              else ["--ckpt", str(data.get("bundle", "BUNDLE"))])
    argv = ["dga-bench", *source, "--out", shown.rsplit("/", 1)[0], "--name", path.stem,
            "--batch-sizes", ",".join(map(str, batches))]
    if backends:
        argv += ["--backends", ",".join(backends)]
    if precisions:
        argv += ["--precisions", ",".join(precisions)]
    rounds = rows[0].get("rounds_images_per_s") if rows else None
    if isinstance(rounds, list):
        argv += ["--rounds", str(len(rounds))]
    e = data.get("end_to_end") or {}
    if e:
        argv += ["--e2e-images", str(e.get("images")), "--e2e-batch", str(e.get("batch"))]
        if isinstance(e.get("round_ratios"), list):
            argv += ["--e2e-rounds", str(len(e["round_ratios"]))]
        elif isinstance(e.get("rounds"), dict) and isinstance(e["rounds"].get("model_only"), list):
            argv += ["--e2e-rounds", str(len(e["rounds"]["model_only"]))]
    return argv


def _range(s: object, fmt: str, unit: str = "") -> str:
    """"median (min–max)" of a ``measure.spread`` record."""
    if not isinstance(s, dict) or not isinstance(s.get("median"), int | float):
        return "–"
    return f"{format(s['median'], fmt)}{unit} ({format(s['min'], fmt)}–{format(s['max'], fmt)})"


def bench_model_line(data: dict) -> str:
    built = data.get("bundle_built")
    what = (f"an untrained bundle built by `--backbone` ({cell(built.get('pretrained'))} weights, "
            f"{cell(built.get('classes'))} classes)" if isinstance(built, dict) else f"bundle `{data.get('bundle')}`")
    return (f"Model: {data.get('method')} with {data.get('views')} views, backbone {data.get('backbone')}, "
            f"S0 {data.get('s0')}, {what}.")


def plan_lines(data: dict) -> list[str]:
    plan = data.get("plan")
    if not isinstance(plan, dict):
        return []
    budget = data.get("budget_s")
    parts = [f"batch sizes {', '.join(map(str, plan.get('batch_sizes', [])))}",
             f"{plan.get('rounds')} interleaved rounds of {plan.get('repeat')} timed calls "
             f"(at least {num(plan.get('min_time_s'), 'g')} s) per configuration",
             f"end-to-end {plan.get('e2e_images')} images in batches of {plan.get('e2e_batch')}, "
             f"{plan.get('e2e_rounds')} rounds"]
    text = "Plan: " + "; ".join(parts)
    if budget:
        gave = ", ".join(plan.get("gave_up") or []) or "nothing"
        text += (f". Budget {num(budget, '.0f')} s: {num(plan.get('available_s'), '.0f')} s were left for the rounds "
                 f"after building and exporting, predicted {num(plan.get('estimated_s'), '.0f')} s; reduced to fit: "
                 f"{cell(gave)}" + ("" if plan.get("fits", True) else " (and still predicted over the budget)"))
    text += f". Wall time {num(data.get('wall_s'), '.0f')} s"
    phases = data.get("phases_s")
    if isinstance(phases, dict) and phases:
        text += " (" + ", ".join(f"{cell(k.replace('_', ' '))} {num(v, '.0f')} s" for k, v in phases.items()) + ")"
    return [text + ".", ""]


def chunk_lines(data: dict) -> list[str]:
    lines = []
    for backend, chunk in (data.get("runner_chunks") or {}).items():  # files written before the chunk was measured
        lines.append(f"{backend} called the graph on slices of at most {chunk} images.")
    for precision, c in (data.get("cpu_chunks") or {}).items():
        if not isinstance(c, dict):
            continue
        size = "the whole batch in one call" if c.get("chunk") is None else f"{c['chunk']} image(s) per call"
        how = {"measured": "measured at load", "cache": "from the cache of an earlier measurement",
               "argument": "set by the caller", "environment": "set by DGA_ORT_CPU_CHUNK"}.get(c.get("source"),
                                                                                                c.get("source"))
        times = c.get("per_image_ms")
        probe = ("; probe (images per call: ms per image) "
                 + ", ".join(f"{n}: {num(v, '.1f')}" for n, v in times.items()) if isinstance(times, dict) and times
                 else "")
        lines.append(f"ONNX Runtime CPU chunk, {cell(precision)}: {size} ({how}){probe}.")
    return [line for item in lines for line in (item, "")]


def agreement_lines(data: dict) -> list[str]:
    rows = data.get("agreement") or []
    if not rows:
        return []
    lines = [f"Top-1 agreement with the eager loop (torch fp32) on the {rows[0].get('images')} benchmark images of "
             "the largest batch:", "", "| what | backend | precision | top-1 agreement | max abs logit difference |",
             "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {cell(r.get('kind'))} | {cell(r.get('backend'))} | {cell(r.get('precision'))} | "
                     f"{pct(r.get('top1_agreement'), 1)} | {num(r.get('max_abs_logit_diff'), '.2g')} |")
    return lines + [""]


def setup_lines(data: dict) -> list[str]:
    lines = []
    comp = data.get("compile")
    if isinstance(comp, dict):
        if comp.get("error"):
            lines.append(f"torch.compile gave no rows: {cell(comp['error'])} (after "
                         f"{num(comp.get('compile_s'), '.0f')} s, limit {num(comp.get('timeout_s'), '.0f')} s).")
        else:
            lines.append(f"torch.compile took {num(comp.get('compile_s'), '.0f')} s before its first timed call.")
    for precision, q in (data.get("quantize") or {}).items():
        if isinstance(q, dict):
            calib = (f", calibrated on {q['calibration_images']} images" if q.get("calibration_images") else "")
            lines.append(f"{cell(precision)} graph quantized from the fp32 graph in {num(q.get('seconds'), '.0f')} s"
                         f"{calib}.")
    return [line for item in lines for line in (item, "")]


def targets(data: dict) -> list[tuple[str, str, str]]:
    """(target, what the file measured, met?) for the CPU targets, from the file's own rows."""
    rows, lim = data["rows"], data.get("limit") or {}
    eager = _eager(rows)
    onnx = {r["batch"]: r for r in rows if r.get("kind") == ONNX and r.get("precision") == "fp32"}
    out = []
    if onnx:
        ratios = {b: vs_eager(r, eager) for b, r in sorted(onnx.items())}
        known = [v for v in ratios.values() if v is not None]
        if known:
            out.append((f"fused ONNX fp32 ≥ {TARGET_VS_EAGER:.1f}x the eager loop at every batch",
                        ", ".join(f"batch {b}: {num(v, '.2f')}x" for b, v in ratios.items()),
                        "yes" if min(known) >= TARGET_VS_EAGER else "no"))
        roofs = {b: roofline(r, lim) for b, r in sorted(onnx.items())}
        known = [v for v in roofs.values() if v is not None]
        if known:
            out.append((f"fused ONNX fp32 ≥ {100 * TARGET_ROOFLINE:.0f} % of the measured matmul peak at every batch",
                        ", ".join(f"batch {b}: {pct(v)}" for b, v in roofs.items()),
                        "yes" if min(known) >= TARGET_ROOFLINE else "no"))
    int8 = [r for r in rows if r.get("kind") == ONNX and str(r.get("precision", "")).startswith("int8")]
    limit_ips = lim.get("limit_images_per_s")
    if int8 and isinstance(limit_ips, int | float):
        best = max(int8, key=lambda r: r["images_per_s"])
        out.append(("int8 above the fp32 roofline (the fp32 matmul peak's images/s)",
                    f"best {best['precision']} at batch {best['batch']}: {pct(best['images_per_s'] / limit_ips)}",
                    "yes" if best["images_per_s"] > limit_ips else "no"))
    e = data.get("end_to_end") or {}
    if isinstance(e.get("of_ceiling"), int | float):
        out.append((f"end-to-end ≥ {100 * TARGET_OF_CEILING:.0f} % of the shared-core ceiling",
                    f"{pct(e['of_ceiling'])} (ceiling {pct(e.get('shared_core_ceiling'))} of model-only)",
                    "yes" if e["of_ceiling"] >= TARGET_OF_CEILING else "no"))
    return out


def render_bench(path: Path, data: dict, shown: str, md_beside: bool | None = None) -> list[str]:
    rows = data["rows"]
    lim = data.get("limit") or {}
    beside = path.with_suffix(".md").is_file() if md_beside is None else md_beside
    lines = [f"### {path.stem}", "", f"File: `{shown}`" + (f" (and `{path.stem}.md` beside it)" if beside else ""), ""]
    lines += command_lines(data, bench_rebuilt(path, data, shown))
    lines += [f"Date: {data.get('date', 'not recorded')}. Machine: {machine_text(data.get('machine', {}))}.", "",
              bench_model_line(data), ""]
    lines += plan_lines(data)
    eager = _eager(rows)
    lines += ["| what | backend | precision | batch | images/s | vs eager loop | ms per image | roofline | "
              "latency ms (median) | p90 ms | peak RSS MB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = vs_eager(r, eager)
        speedup = "" if r.get("kind") == EAGER or ratio is None else f"{ratio:.2f}x"
        if speedup and isinstance(r.get("vs_eager"), dict):
            speedup += f" ({r['vs_eager']['min']:.2f}–{r['vs_eager']['max']:.2f})"
        per_image = _range(r.get("ms_per_image"), ".1f") if "ms_per_image" in r else num(
            r.get("latency_ms", 0) / r["batch"] if r.get("batch") else None)
        ips = r.get("images_per_s")
        lines.append(f"| {cell(r['kind'])} | {cell(r['backend'])} | {r['precision']} | {r['batch']} | "
                     f"{num(ips, '.1f' if not isinstance(ips, int | float) or ips >= 10 else '.2f')} | {speedup} | "
                     f"{per_image} | {pct(roofline(r, lim))} | "
                     f"{num(r.get('latency_ms'))} | {num(r.get('p90_ms'))} | {num(r.get('peak_rss_mb'), '.0f')} |")
    lines.append("")
    if any("ms_per_image" in r for r in rows):
        lines += ["Ratios to the eager loop and ms per image: the median over the rounds, (min–max) over the rounds; "
                  "each round times every configuration once, side by side. Roofline: the row's encoder FLOP/s over "
                  "the measured matmul peak below.", ""]
    lines += chunk_lines(data) + setup_lines(data) + agreement_lines(data)
    e = data.get("end_to_end") or {}
    if e:
        lo, hi = (e.get("jpeg_sides_px") or ["?", "?"])[:2]
        fields = [
            ("folder", f"{e.get('images')} generated JPEGs, sides {lo}-{hi} px; {e.get('backend')} "
                       f"{e.get('precision')}, batch {e.get('batch')}, {e.get('decode_workers', '?')} decode threads"),
            ("end-to-end", f"{num(e.get('end_to_end_images_per_s'))} images/s"),
            ("model-only", f"{num(e.get('model_only_images_per_s'))} images/s"),
            ("end-to-end / model-only", pct(e.get("ratio"))
             + (f" (median of the rounds' own ratios: {pcts(e['round_ratios'])})" if "round_ratios" in e else "")),
        ]
        if "ratio_of_medians" in e:
            fields.append(("ratio of the medians", pct(e["ratio_of_medians"])))
        if "decode_priority" in e:
            fields.append(("decode priority", e["decode_priority"]
                           + ("; gave way to normal priority during the rounds" if e.get("decode_gave_way") else "")))
        n = e.get("normal_priority")
        if isinstance(n, dict):
            fields.append(("same rounds, decode at normal priority",
                           f"{num(n.get('end_to_end_images_per_s'))} images/s, {pct(n.get('ratio'))} of model-only "
                           f"(rounds {pcts(n.get('round_ratios'))})"))
        if "decode_one_worker_images_per_s" in e:
            fields.append(("decode alone, one worker", f"{num(e['decode_one_worker_images_per_s'], '.0f')} images/s"
                           + (f", {num(e['decode_cpu_ms_per_image'], '.2f')} CPU ms per image"
                              if "decode_cpu_ms_per_image" in e else "")))
        busy = e.get("cores_busy")
        if isinstance(busy, dict):
            fields.append(("cores busy (of " + str(e.get("cores", "?")) + ")",
                           ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in busy.items())))
        if "shared_core_ceiling" in e:
            fields.append(("shared-core ceiling", pct(e["shared_core_ceiling"])
                           + (f" (rounds {pcts(e['round_ceilings'])})" if "round_ceilings" in e else "")))
        if "of_ceiling" in e:
            fields.append(("end-to-end reached of the ceiling", pct(e["of_ceiling"])))
        lines += ["End-to-end (the Predictor over a folder, medians over interleaved rounds):", "",
                  "| field | value |", "|---|---|"]
        lines += [f"| {cell(k)} | {cell(v)} |" for k, v in fields]
        lines.append("")
    steal = [data.get("cpu_steal_table"), *(e.get("cpu_steal_per_round") or [])]
    if any(s is not None for s in steal):
        per_round = pcts(steal[1:]) if len(steal) > 1 else ""
        lines += [f"CPU steal (time the hypervisor gave to other guests while the run had work): "
                  f"{pct(steal[0]) if steal[0] is not None else '?'} during the table"
                  + (f", per end-to-end round {per_round}" if per_round else "") + ".", ""]
    if lim:
        by_lib = lim.get("peak_matmul_flops_per_s_by_library") or {}
        peaks = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in by_lib.items())
        fused = [r["images_per_s"] for r in rows if r.get("kind") != EAGER]
        best = max(fused) if fused else None
        rate = lim["limit_images_per_s"]
        rate_text = f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"  # a real-size model on a CPU: below 1
        lines += [f"Physical limit: {lim['encoder_flops_per_view'] / 1e9:.3f} GFLOP per view × {lim['views']} views "
                  f"at a measured {lim['peak_matmul_flops_per_s'] / 1e9:.0f} GFLOP/s matmul peak"
                  + (f" ({peaks} GFLOP/s; the fastest counts)" if peaks else "") + f" = {rate_text} images/s"
                  + (f"; the fastest fused row reached {100 * best / rate:.0f} % of it." if best else "."), ""]
    met = targets(data) if any("vs_eager" in r for r in rows) else []  # files with per-round ratios
    if met:
        lines += ["Targets of a CPU run (what each means: [Benchmarks](index.md#targets)):", "",
                  "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {cell(t)} | {cell(m)} | {ok} |" for t, m, ok in met] + [""]
    return lines


def bench_summary(items: list[tuple[Path, dict]]) -> list[str]:
    batches = sorted({r["batch"] for _, d in items for r in d["rows"]})
    head = ["file", "date", "backbone", *(f"ONNX fp32 vs eager, batch {b}" for b in batches),
            "end-to-end / model-only", "steal"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for path, d in items:
        eager = _eager(d["rows"])
        cells = [f"[{path.stem}](#{path.stem.lower()})", str(d.get("date", ""))[:10], cell(d.get("backbone", ""))]
        for b in batches:
            onnx = [vs_eager(r, eager) for r in d["rows"]
                    if r.get("kind") == ONNX and r.get("precision") == "fp32" and r["batch"] == b]
            onnx = [v for v in onnx if v is not None]
            cells.append(f"{max(onnx):.2f}x" if onnx else "–")
        e = d.get("end_to_end") or {}
        cells.append(pct(e.get("ratio")))
        cells.append(pct(d.get("cpu_steal_table")) if d.get("cpu_steal_table") is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


# -- preprocessing parity ------------------------------------------------------------------------

PARITY_COMPARISONS = {
    "box_vs_torchvision": "eval transform vs torchvision Resize + CenterCrop",
    "draft_vs_exact": "JPEG draft decode vs exact decode",
    "deployed_vs_torchvision": "dga-infer default vs torchvision",
}


def render_parity(path: Path, data: dict, shown: str) -> list[str]:
    lines = [f"### {path.stem}", "", f"File: `{shown}`", ""]
    lines += command_lines(data, [])
    lines += [f"Date: {data.get('date', 'not recorded')}. Machine: {machine_text(data.get('machine', {}))}.", ""]
    if data.get("what"):
        lines += [f"{cell(data['what'])}; S0 = {data.get('size')}. Pixel differences are on uint8 RGB values; "
                  "a top-1 flip is an image whose zero-shot top-1 class differs between the two pipelines.", ""]
    for name, sset in data["sets"].items():
        if not isinstance(sset, dict):
            continue
        lines += [f"**{cell(name)}**: {cell(sset.get('description', ''))} ({sset.get('images', '?')} images).", "",
                  "| comparison | images differing | % values differing | % values > 1 | % values > 2 | max abs diff "
                  "| mean abs diff | top-1 flips |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        flips = sset.get("top1_flips") or {}
        for key in [k for k in sset if isinstance(sset[k], dict) and "images_differing" in sset[k]]:
            c = sset[key]
            f = flips.get(key) or {}
            flip = f"{f['flips']} ({num(f.get('pct'), '.2f')} %)" if "flips" in f else "–"
            lines.append(f"| {cell(PARITY_COMPARISONS.get(key, key))} | {c.get('images_differing')} of "
                         f"{c.get('images')} | {num(c.get('pct_values_differing'), '.2f')} | "
                         f"{num(c.get('pct_values_over_1'), '.2f')} | {num(c.get('pct_values_over_2'), '.2f')} | "
                         f"{c.get('max_abs', '–')} | {num(c.get('mean_abs'), '.4f')} | {flip} |")
        lines.append("")
        acc = flips.get("accuracy_pct")
        if isinstance(acc, dict) and acc:
            lines += ["Zero-shot accuracy (%) with each pipeline's pixels: "
                      + ", ".join(f"{cell(k.replace('_', ' '))} {num(v, '.2f')}" for k, v in acc.items()) + ".", ""]
    return lines


# -- serving (dga-bench --suite serve) ------------------------------------------------------------

def render_serve(path: Path, data: dict, shown: str) -> list[str]:
    opts = data.get("options", {})
    rebuilt = ["dga-bench", "--suite", "serve", "--package", "PKG", "--concurrency",
               ",".join(str(c) for c in opts.get("concurrency", [])), "--requests", str(opts.get("requests"))]
    pkg = data.get("package", {})
    lines = [f"### {path.stem}", "", f"File: `{shown}`", ""] + command_lines(data, rebuilt)
    lines += [f"Date: {data.get('date', 'not recorded')}. Machine: {machine_text(data.get('machine', {}))}. "
              f"Package: {pkg.get('method')} at S0 = {pkg.get('s0')}, {pkg.get('classes')} classes, max batch "
              f"{pkg.get('max_batch')}. {cell(data.get('server', ''))}; {cell(data.get('request', ''))}.", "",
              "| concurrency | requests | requests/s | p50 ms | p99 ms | mean ms | executions | errors |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data.get("rows", []):
        lines.append(f"| {r.get('concurrency')} | {r.get('requests')} | {num(r.get('requests_per_s'))} | "
                     f"{num(r.get('p50_ms'))} | {num(r.get('p99_ms'))} | {num(r.get('mean_ms'))} | "
                     f"{r.get('executions')} | {r.get('errors')} |")
    return lines + ["", "Executions fewer than requests: Triton's dynamic batching merged requests into one "
                        "model call.", ""]


# -- pretraining replay ---------------------------------------------------------------------------

def render_pretrain(path: Path, data: dict, shown: str) -> list[str]:
    folder = path.parent
    lines = [f"### {folder.name}", "", f"File: `{shown}`"
             + (f" and `{shown.rsplit('/', 1)[0]}/compare.json`" if (folder / "compare.json").is_file() else ""), ""]
    lines += command_lines(data, [])
    lines += [f"Date: {data.get('date', 'not recorded')}. Machine: {machine_text(data.get('machine', {}))}.", ""]
    fields = [("model", data.get("model")), ("steps × batch", f"{data.get('steps')} × {data.get('batch')}"),
              ("seed", data.get("seed")), ("wall time", data.get("time_real") or f"{num(data.get('wall_s'))} s"),
              ("training", f"{num(data.get('train_s'))} s at {num(data.get('images_per_s'))} images/s"),
              ("final loss", num(data.get("final_loss"), ".4f")), ("weights", data.get("weights"))]
    lines += ["| field | value |", "|---|---|"] + [f"| {k} | {cell(v)} |" for k, v in fields if v is not None]
    lines.append("")
    compare = {}
    if (folder / "compare.json").is_file():
        try:
            compare = json.loads((folder / "compare.json").read_text(encoding="utf-8"))
        except ValueError:
            compare = {}
    zs = {k: v for k, v in data.items() if k.startswith("zero_shot") and isinstance(v, dict)}
    if zs:
        attrs = [a for a in ("full", "colour", "fill", "size", "shape") if a in next(iter(zs.values()))]
        ref = (compare.get("zero_shot_full") or {})
        lines += ["Zero-shot accuracy (%) on held-out scenes against every attribute combination"
                  + (" (committed weights, full combination, in the last column)" if ref else "") + ":", "",
                  "| evaluation | " + " | ".join(attrs) + (" | committed weights, full |" if ref else " |"),
                  "|---|" + "---:|" * (len(attrs) + (1 if ref else 0))]
        for name, v in zs.items():
            extra = [num(100 * ref[name]["reference"])] if ref.get(name, {}).get("reference") is not None else (
                [""] if ref else [])
            lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(num(100 * v[a]) for a in attrs)
                         + (" | " + " | ".join(extra) if extra else "") + " |")
        lines.append("")
    if compare:
        tail = compare.get("tail_mean_loss") or {}
        lines += [f"Loss curve against the committed one over {compare.get('steps_compared')} logged points: "
                  f"median relative difference {pct(compare.get('rel_diff_median'), 1)}, "
                  f"p90 {pct(compare.get('rel_diff_p90'), 1)}, largest {pct(compare.get('rel_diff_max'), 1)} "
                  f"(step {compare.get('max_at_step')}), {pct(compare.get('within_5_percent'))} of points within "
                  f"5 %; first differing step {compare.get('first_differing_step')}; mean loss of the tail "
                  f"{num(tail.get('replay'), '.3f')} (replay) vs {num(tail.get('reference'), '.3f')} (committed).", ""]
    return lines


# -- the page -------------------------------------------------------------------------------------

def any_gpu(found: dict[str, list[tuple[Path, dict]]]) -> bool:
    return any(isinstance(d.get("machine"), dict) and d["machine"].get("gpu") for items in found.values()
               for _, d in items)


def render(root: Path = RESULTS, label: str = RESULTS_LABEL) -> str:
    """The page for the results under ``root``, which the page calls ``label``."""
    found = find_results(root)

    def shown(path: Path) -> str:
        return f"{label}/{path.relative_to(root).as_posix()}"

    lines = ["<!-- Generated by `python -m dga.bench.render --out docs/benchmarks/results.md` from the JSON files "
             "under bench/results/; do not edit. -->", "", "# Measured results", "",
             f"Every figure on this page is read from a JSON file under `{label}/`, named above its table with the "
             "command that wrote it. What each field means, and how to measure your own: "
             "[Benchmarks](index.md)." + ("" if any_gpu(found) else " None of them was measured on a GPU."), ""]
    if found["compare"]:
        lines += ["## Accuracy of every method (dga-compare)", ""]
        for path, data in found["compare"]:
            lines += render_compare(path, data, shown(path))
    if found["bench"]:
        lines += ["## Speed (dga-bench)", "", "Newest first. Speed-up of the fused ONNX graph over the eager "
                  "per-view loop at each batch size, and end-to-end / model-only throughput:", ""]
        lines += bench_summary(found["bench"])
        for path, data in found["bench"]:
            lines += render_bench(path, data, shown(path))
    for kind, title, render_one in (("serve", "Serving through Triton", render_serve),
                                    ("parity", "Preprocessing parity", render_parity),
                                    ("pretrain", "Pretraining replay of the shipped backbone", render_pretrain)):
        if found[kind]:
            lines += [f"## {title}", ""]
            for path, data in found[kind]:
                lines += render_one(path, data, shown(path))
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dga.bench.render", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/results.md"), help="page to write or check")
    parser.add_argument("--results", type=Path, default=None, help=f"results folder [{RESULTS_LABEL}]")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from what would be written")
    args = parser.parse_args(argv)
    root = args.results or RESULTS
    text = render(root, RESULTS_LABEL if args.results is None else args.results.as_posix())
    return write_or_check_generated(args.out, text, args.check, REGENERATE)


if __name__ == "__main__":
    sys.exit(main())
