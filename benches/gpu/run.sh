#!/usr/bin/env bash
# The prepared GPU check of vlmfast: Triton parity tests on CUDA + the GPU benchmarks,
# written to ONE JSON (README's GPU tables are filled from it). Under 8 minutes on one
# H100 (each step has its own timeout; a step that runs out is recorded, not fatal).
#
# Prepare (on the build machine, from the repository root):
#   .venv/bin/maturin build --release -o dist          # abi3 wheel: any CPython >= 3.11
#   .venv/bin/pip download -d dist/wheelhouse pytest numpy safetensors  # only if the GPU box lacks them
# On the GPU machine (python3.12 with torch + triton preinstalled; no network needed):
#   bash benches/gpu/run.sh --wheel dist/vlmfast-*.whl [--wheelhouse dist/wheelhouse] [OUT.json]
#   (or pip install the wheel yourself and leave --wheel out)
# CPU smoke run of everything, tiny (what tests/benches/test_gpu_script.py runs):
#   bash benches/gpu/run.sh --dry-run /tmp/gpu_check.json
#
# Output: OUT.json (argument), else $OUT/gpu_check.json when $OUT is set, else ./gpu_check.json.
# Keys: started/finished (UTC), commit, dry_run, device/card/torch/triton/cuda, parity
# {rc, tests, failures, errors, skipped, seconds}, sae {per arch: vlmfast_s, plain_torch_s,
# speedup, ...}, auroc {wall_s, cpu_s, ...}, patching {serial_s, batched_s, speedup,
# max_abs_diff}. Environment: PYTHON (default python3), PARITY_TIMEOUT (s, default 200),
# BENCH_TIMEOUT (s, default 240).
set -uo pipefail

PY=${PYTHON:-python3}
DRY=0
WHEEL=""
WHEELHOUSE=""
DEST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheel) WHEEL="$2"; shift ;;
    --wheelhouse) WHEELHOUSE="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) DEST="$1" ;;
  esac
  shift
done
if [ -z "$DEST" ]; then
  if [ -n "${OUT:-}" ]; then DEST="$OUT/gpu_check.json"; else DEST="gpu_check.json"; fi
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

if [ -n "$WHEEL" ]; then
  if [ -n "$WHEELHOUSE" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELHOUSE" "$WHEEL" pytest || exit 3
  else
    "$PY" -m pip install -q --no-deps "$WHEEL" || exit 3
  fi
fi
"$PY" -c "import vlmfast" || { echo "run.sh: vlmfast does not import (install the wheel: --wheel)" >&2; exit 3; }
if [ "$DRY" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "run.sh: no CUDA device; use --dry-run for the CPU smoke run" >&2
  exit 4
fi

# 1. Triton parity tests (on CUDA the kernels compile for the card; off it, --dry-run
#    runs a tiny selection through the interpreter)
PARITY_T0=$(date +%s)
if [ "$DRY" = 1 ]; then
  TRITON_INTERPRET=1 OMP_NUM_THREADS=1 timeout "${PARITY_TIMEOUT:-200}" "$PY" -m pytest -q -p no:cacheprovider \
    tests/ops/test_reference_fast_paths.py -k scatter_grad --junitxml="$WORK/parity.xml" > "$WORK/parity.log" 2>&1
else
  timeout "${PARITY_TIMEOUT:-200}" "$PY" -m pytest -q -p no:cacheprovider tests/kernels tests/ops \
    -m "not slow" --junitxml="$WORK/parity.xml" > "$WORK/parity.log" 2>&1
fi
PARITY_RC=$?
PARITY_S=$(( $(date +%s) - PARITY_T0 ))
tail -n 5 "$WORK/parity.log"

# 2. GPU benchmarks (SAE step per architecture, AUROC table, batched patching)
BENCH_ARGS=("$WORK/bench.json")
if [ "$DRY" = 1 ]; then BENCH_ARGS+=(--dry-run); fi
timeout "${BENCH_TIMEOUT:-240}" "$PY" benches/gpu/gpu_bench.py "${BENCH_ARGS[@]}"
BENCH_RC=$?

# 3. One JSON
COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
"$PY" - "$WORK" "$DEST" "$STARTED" "$COMMIT" "$PARITY_RC" "$PARITY_S" "$BENCH_RC" "$DRY" <<'PYEOF'
import datetime, json, sys, xml.etree.ElementTree as ET
from pathlib import Path

work, dest, started, commit, parity_rc, parity_s, bench_rc, dry = sys.argv[1:]
out = {"started": started, "commit": commit, "dry_run": dry == "1"}
bench = Path(work, "bench.json")
out.update(json.loads(bench.read_text()) if bench.exists() else {"bench_error": f"rc {bench_rc}"})
out["bench_rc"] = int(bench_rc)
parity = {"rc": int(parity_rc), "seconds": int(parity_s)}
xml = Path(work, "parity.xml")
if xml.exists():
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    for key in ("tests", "failures", "errors", "skipped"):
        parity[key] = int(suite.get(key, 0))
else:
    parity["error"] = "no junit report (pytest missing or timed out)"
    parity["log_tail"] = Path(work, "parity.log").read_text()[-2000:] if Path(work, "parity.log").exists() else ""
out["parity"] = parity
out["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
Path(dest).parent.mkdir(parents=True, exist_ok=True)
Path(dest).write_text(json.dumps(out, indent=2))
print(f"wrote {dest}")
PYEOF
