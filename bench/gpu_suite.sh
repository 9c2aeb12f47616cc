#!/usr/bin/env bash
# The GPU benchmark suite on a GPU host: checks what it needs, then runs `python -m dga.bench.gpu`.
#
#   bench/gpu_suite.sh [--python PY] [--wheelhouse DIR] [SUITE OPTIONS]
#   bench/gpu_suite.sh --wheelhouse wheelhouse --out bench/results          # ViT-B-16, batches 1,8,64,256
#   bench/gpu_suite.sh --device cpu --backbone dga-test-vit-p32 --batches 1,2 --precision fp32   # CI
#
# Installs nothing unless given --wheelhouse DIR: then every wheel in DIR is installed with
# `pip install --no-index --no-deps` into a temporary folder put first on PYTHONPATH (removed at exit),
# and this checkout too (`--no-deps`) when `import dga` fails. Every other option goes to the suite
# (python -m dga.bench.gpu --help). docs/deployment.md ("GPU benchmark suite") says how to build DIR.
set -euo pipefail

PY="${PYTHON:-python3}"
WHEELHOUSE=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="${2:?--python needs a path}"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

die() { echo "gpu_suite.sh: $*" >&2; exit 2; }

command -v "$PY" >/dev/null 2>&1 || die "no Python at '$PY': pass --python PATH (Python 3.11 or newer with torch)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a folder"
  shopt -s nullglob
  WHEELS=("$WHEELHOUSE"/*.whl)
  shopt -u nullglob
  [ ${#WHEELS[@]} -gt 0 ] || die "--wheelhouse $WHEELHOUSE holds no .whl files"
  SITE="$(mktemp -d "${TMPDIR:-/tmp}/dga-gpu-suite-site.XXXXXX")"
  trap 'rm -rf "$SITE"' EXIT
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${WHEELS[@]}" \
    || die "pip could not install the wheels of $WHEELHOUSE (built for another Python or platform?)"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -P -c "import dga.bench" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$SITE" "$ROOT" \
      || die "pip could not install the project from $ROOT with --no-deps (needs setuptools>=68)"
  fi
fi

# -P: never import the checkout's own dga/ folder (a part of the package only) from the current directory.
# What the suite imports, checked before anything runs: one line per missing module.
"$PY" -P - <<'EOF' || exit 2
import sys

try:
    from dga.bench.gpu import missing_modules
except ImportError as exc:
    print(f"gpu_suite.sh: cannot import dga ({exc}): pip install --no-deps . in the checkout, "
          "or pass --wheelhouse DIR", file=sys.stderr)
    sys.exit(1)
missing = missing_modules()
for line in missing:
    print(f"gpu_suite.sh: {line}", file=sys.stderr)
sys.exit(1 if missing else 0)
EOF

"$PY" -P -m dga.bench.gpu ${ARGS[@]+"${ARGS[@]}"}
