"""The user manual: generated pages are current, every option of every command is documented, links
stay inside the repository, no page reads like a log of how it was made, and the site builds."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dga.bench import render
from dga.cli import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_PAGE = DOCS / "reference" / "cli.md"
RESULTS_PAGE = DOCS / "benchmarks" / "results.md"
GENERATED = {CLI_PAGE, RESULTS_PAGE}
HEAVY = ("torch", "torchvision", "open_clip", "onnx", "onnxruntime", "numpy", "PIL", "tensorrt")

README_COMMANDS = """\
# 1. set up and run the demo (offline: generates data, trains DGA, exports, verifies, runs the graph)
python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[train]' && dga-demo
# 2. set up and run the tests (what .ci/run does)
python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest
"""


def manual_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def without_code(text: str) -> str:
    """Markdown with fenced code blocks and inline code removed (brackets there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def link_targets(text: str) -> list[str]:
    text = without_code(text)
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)  # [text](target "title")
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", text, flags=re.M)  # [ref]: target
    targets += re.findall(r"<((?:https?|file|ftp)://[^>\s]+)>", text)  # <autolink>
    targets += re.findall(r"(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", text)  # raw HTML
    return targets


def command_sections(page: str) -> dict[str, str]:
    parts = re.split(r"^## ", page, flags=re.M)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


# -- the CLI reference ---------------------------------------------------------------------------

def test_cli_reference_is_current():
    assert CLI_PAGE.is_file(), f"{CLI_PAGE} is missing: {reference.REGENERATE}"
    assert CLI_PAGE.read_text(encoding="utf-8") == reference.render(), (
        f"{CLI_PAGE.relative_to(ROOT)} is stale: regenerate it with {reference.REGENERATE}")


def test_cli_reference_documents_every_console_script_and_option():
    scripts = reference.console_scripts()
    assert {s.name for s in scripts} >= {"dga-train", "dga-eval", "dga-export", "dga-infer", "dga-bench",
                                         "dga-demo", "dga-compare", "dga-verify"}
    sections = command_sections(CLI_PAGE.read_text(encoding="utf-8"))
    for script in scripts:
        command = reference.load_command(script)
        assert command is not None, f"{script.name} is declared in pyproject.toml but {script.module} does not exist"
        assert script.name in sections, f"{script.name} has no section in {CLI_PAGE.name}"
        section = sections[script.name]
        for param in command.params:
            if param.param_type_name == "argument":
                assert f"`{param.name.upper()}`" in section, f"{script.name}: argument {param.name} undocumented"
                continue
            for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
                assert f"`{opt}`" in section, f"{script.name}: option {opt} is not in {CLI_PAGE.name}"
        examples, _ = reference.epilog_blocks(command.epilog or "")
        assert examples, f"{script.name} --help has no examples"
        for example in examples:
            assert example in section, f"{script.name}: example {example!r} is not in {CLI_PAGE.name}"


def test_cli_reference_imports_only_the_cli_modules():
    code = ("import sys; from dga.cli import reference; reference.render(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"rendering the CLI reference imported {out.stdout.strip()}"


def test_cli_reference_check_mode(tmp_path, capsys):
    page = tmp_path / "cli.md"
    assert reference.main(["--out", str(page)]) == 0
    assert reference.main(["--out", str(page), "--check"]) == 0
    page.write_text(page.read_text() + "edited by hand\n")
    assert reference.main(["--out", str(page), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert reference.main(["--out", str(tmp_path / "absent.md"), "--check"]) == 1


# -- the results page ----------------------------------------------------------------------------

def test_results_page_is_current():
    assert RESULTS_PAGE.is_file(), f"{RESULTS_PAGE} is missing: {render.REGENERATE}"
    assert RESULTS_PAGE.read_text(encoding="utf-8") == render.render(), (
        f"{RESULTS_PAGE.relative_to(ROOT)} is stale: regenerate it with {render.REGENERATE}")


def test_results_page_names_every_result_file_and_its_command():
    page = RESULTS_PAGE.read_text(encoding="utf-8")
    found = render.find_results(render.RESULTS)
    assert found["bench"] and found["compare"], "no measured results found under bench/results"
    for items in found.values():
        for path, _ in items:
            rel = path.relative_to(render.RESULTS).as_posix()
            assert f"`{render.RESULTS_LABEL}/{rel}`" in page, f"{rel} is not named on the results page"
    assert page.count("Command (") == sum(len(v) for v in found.values())


def test_results_renderer_is_standard_library_only():
    code = ("import sys; from dga.bench import render; render.render(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"rendering the results page imported {out.stdout.strip()}"


def _bench_json(**extra) -> dict:
    row = {"kind": render.EAGER, "backend": "torch:cpu", "precision": "fp32", "batch": 8, "images_per_s": 10.0,
           "latency_ms": 800.0, "p90_ms": 900.0, "peak_rss_mb": 100.0}
    fused = {**row, "kind": "fused ONNX graph", "backend": "onnxruntime:CPUExecutionProvider", "images_per_s": 20.0}
    return {"date": "2000-01-01T00:00:00+00:00", "machine": {"cpu": "x86_64", "cpu_count": 4}, "bundle": "b.dga",
            "method": "dga", "backbone": "tiny", "views": 6, "s0": 192, "rows": [row, fused], "end_to_end": {},
            "limit": {"encoder_flops_per_view": 1e9, "views": 6, "peak_matmul_flops_per_s": 1e11,
                      "limit_images_per_s": 16.7}, **extra}


def test_results_renderer_uses_the_recorded_command_or_says_it_rebuilt_one(tmp_path):
    (tmp_path / "with.json").write_text(json.dumps(_bench_json(command=["dga-bench", "--ckpt", "b.dga"])))
    (tmp_path / "without.json").write_text(json.dumps(_bench_json()))
    (tmp_path / "other.json").write_text(json.dumps({"unrelated": True}))
    page = render.render(tmp_path, "results")
    assert "Command (as recorded in the JSON):\n\n```bash\ndga-bench --ckpt b.dga\n```" in page
    assert "Command (rebuilt from the settings the JSON records" in page
    assert "--name without --batch-sizes 8 --backends onnxruntime --precisions fp32" in page
    assert "`results/with.json`" in page and "`results/without.json`" in page and "other.json" not in page
    assert "| fused ONNX graph | onnxruntime:CPUExecutionProvider | fp32 | 8 | 20.0 | 2.00x |" in page


def test_results_renderer_check_mode(tmp_path, capsys):
    page = tmp_path / "results.md"
    assert render.main(["--out", str(page)]) == 0
    assert render.main(["--out", str(page), "--check"]) == 0
    page.write_text(page.read_text().replace("images/s", "img/s", 1))
    assert render.main(["--out", str(page), "--check"]) == 1
    assert "stale" in capsys.readouterr().err


# -- every page ----------------------------------------------------------------------------------

def test_manual_links_stay_inside_the_repository():
    problems = []
    for page in manual_pages():
        for target in link_targets(page.read_text(encoding="utf-8")):
            where = f"{page.relative_to(ROOT)}: {target}"
            if re.match(r"^(https?|mailto):", target):
                continue
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith(("/", "~", "\\")):
                problems.append(f"{where} (not a public URL or a relative path)")
                continue
            path = target.split("#", 1)[0].split("?", 1)[0]
            if not path:
                continue  # an anchor on the same page
            resolved = (page.parent / path).resolve()
            if not resolved.is_relative_to(ROOT):
                problems.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                problems.append(f"{where} (does not exist)")
    assert not problems, "bad links:\n" + "\n".join(problems)


# Notes of how the project was made, not a manual: work logs, machines it ran on, internal notes.
RUN_HISTORY = [
    (re.compile(r"\bsessions?\b", re.I), "a work session"),
    (re.compile(r"\bthis (machine|vm|box|laptop)\b", re.I), "the machine it was written on"),
    (re.compile(r"\bmeasured here\b|\bhere \((?:session|\d{4}-\d\d-\d\d)", re.I), "a 'measured here' note"),
    (re.compile(r"\brun history\b|\bdiary\b", re.I), "a run history"),
    (re.compile(r"\.\./shared|/work/|DESIGN\.md|METHODS\.md|ENVIRONMENT\.md"), "an internal note or local path"),
]
ISO_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def test_manual_holds_no_run_history():
    problems = []
    for page in manual_pages():
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for pattern, what in RUN_HISTORY:
                if pattern.search(line):
                    problems.append(f"{page.relative_to(ROOT)}:{n}: {what}: {line.strip()[:100]}")
            if page not in GENERATED and ISO_DATE.search(line):  # generated pages show the JSONs' dates
                problems.append(f"{page.relative_to(ROOT)}:{n}: a dated line: {line.strip()[:100]}")
    assert not problems, "\n".join(problems)


def test_figures_are_quoted_only_through_the_results_page():
    throughput = re.compile(r"\b\d[\d,.]*\s*(?:images|img)/s\b")
    problems = [f"{page.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
                for page in manual_pages() if page != RESULTS_PAGE
                for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
                if throughput.search(line)]
    assert not problems, "measured figures belong on docs/benchmarks/results.md:\n" + "\n".join(problems)


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme, flags=re.M | re.S)
    assert blocks and blocks[0] == README_COMMANDS, "README.md's first code block must be the two commands"
    head = readme.split("```", 1)[0]
    assert head.count("\n## ") == 0, "the two commands come before any section"


def _nav_files(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_every_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_files(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages, f"nav and docs/ differ: {sorted(set(nav) ^ set(pages))}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="the [docs] extra is not installed")
def test_manual_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()
