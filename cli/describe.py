"""dga-describe: class description files from an OpenAI-compatible chat-completions endpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

KINDS = "cupl | desattr | distattr | cause | hierarchy"  # dga.train.describe.KINDS, without importing it

EPILOG = epilog([
    'dga-describe my_images/ --kind cupl --out cupl.json',
    'dga-describe classes.txt --kind desattr --task pet --out desattr.json',
    'dga-describe classes.txt --kind distattr --task pet --out distattr.json',
    'dga-describe classes.txt --kind cause --cause-set shape --out shape.json      # one file per cause',
    'dga-describe classes.txt --kind cause --cause-set "fur or coat type" --task pet --out fur.json',
    'dga-describe --kind hierarchy --hierarchy run.dga --out superclasses.json',
    'dga-describe classes.txt --kind cupl --out cupl.json --base-url http://localhost:8000/v1 --model my-model',
    'dga-describe classes.txt --kind cupl --out cupl.json --dry-run          # the cost estimate only',
    'dga-describe classes.txt --kind cupl --out cupl.json --offline          # from the cache alone',
], "The key is read from the environment variable OPENAI_API_KEY (or the one --api-key-env names), never from "
   "the command line; a local server needs none. Every answer goes to the cache (--cache, default "
   "<out stem>.cache.jsonl next to --out) as it arrives, so an interrupted run resumes where it stopped and a "
   "rerun sends nothing already answered. A cost estimate (requests still to make, tokens) is printed before "
   "any request. Exit codes: 0 the file was written; 2 a usage error, a refused key, an unknown model, a "
   "server that kept failing, a class with no usable answer, or --offline with answers missing from the "
   "cache (one line naming it); nothing is written then; 130 interrupted.")


def describe(
    classes: Path = typer.Argument(None, help="Class names: a folder of class sub-folders (of train/ where it "
                                   "has one) or a text file with one name a line. Not with --kind hierarchy."),
    kind: str = typer.Option(..., help=f"Which descriptions: {KINDS}."),
    out: Path = typer.Option(..., help="Description file to write, {class_name: [sentence, ...]} (dga-train "
                             "--descriptions / --des / --dist / --cause)."),
    n: int = typer.Option(20, "-n", "--n", help="Sentences per class (m), asked for in each request."),
    cause_set: str = typer.Option(None, "--cause-set", help="With --kind cause: the cause described, e.g. shape, "
                                  "colour, texture, context (one run and one file per cause)."),
    task: str = typer.Option("object", help="The papers' task word for the dataset: object, pet, flower, "
                             "aircraft model, texture, food, scene, action, ..."),
    hierarchy: Path = typer.Option(None, help="With --kind hierarchy: a DGA model bundle whose super-classes "
                                   "are described; keys are the member class names joined by ' + '."),
    base_url: str = typer.Option("https://api.openai.com/v1", help="OpenAI-compatible API root (vLLM, llama.cpp "
                                 "server, Ollama: http://HOST:PORT/v1)."),
    model: str = typer.Option("gpt-4o-mini", help="Model name as the server knows it."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    cache: Path = typer.Option(None, help="JSON-lines cache of every answer [<out stem>.cache.jsonl next to --out]."),
    offline: bool = typer.Option(False, "--offline", help="Build --out from the cache alone; fail naming what is "
                                 "missing."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cost estimate and stop."),
    concurrency: int = typer.Option(4, help="Classes asked for at the same time."),
    timeout: float = typer.Option(60.0, help="Seconds a request may take before it is retried."),
    retries: int = typer.Option(5, help="Retries of a request after a 429, a 5xx, a timeout or a connection error "
                                "(exponential backoff, Retry-After honoured)."),
    backoff: float = typer.Option(1.0, help="First retry delay in seconds; doubled on each retry."),
    max_requests: int = typer.Option(5, help="Requests per class at most, until n distinct usable sentences."),
    temperature: float = typer.Option(0.99, help="Sampling temperature (the papers' 0.99)."),
    seed: int = typer.Option(0, help="Sampling seed sent with the requests (request r of a class: seed + r)."),
) -> None:
    """Generate one description file (CuPL, AttrVR DesAttr / DistAttr, a DVP cause, or DGA super-classes)."""
    from dga.train.describe import DescribeOptions, describe_command

    opts = DescribeOptions(kind=kind, n=n, cause=cause_set, task=task, base_url=base_url, model=model,
                           api_key_env=api_key_env, cache=cache, offline=offline, concurrency=concurrency,
                           timeout=timeout, retries=retries, backoff=backoff, temperature=temperature, seed=seed,
                           max_requests=max_requests, dry_run=dry_run)
    describe_command(classes, hierarchy, out, opts, log=typer.echo)


app = single_command(describe, describe.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
