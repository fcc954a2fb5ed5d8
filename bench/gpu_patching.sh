#!/usr/bin/env bash
# Patching benchmark on a CUDA machine: mechkit vs TransformerLens in the same run.
#
#   OUT=/path/to/results bash bench/gpu_patching.sh
#
# Needs python3 and pip. Installs torch only if none is importable (whatever version pip
# gives; an existing CUDA build is kept), then mechkit and its other dependencies without
# touching torch. Writes bench-patching-gpu.json and bench-patching-gpu.log into $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
LOG="$OUT/bench-patching-gpu.log"
PY="${PYTHON:-python3}"
{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "== torch missing: pip install torch"
    "$PY" -m pip install torch
  fi
  if ! "$PY" -c "import transformer_lens, mechkit" 2>/dev/null; then
    echo "== installing mechkit (torch left as is)"
    "$PY" -m pip install --no-deps -e .
    "$PY" -m pip install "transformer-lens>=3.9,<4" einops jaxtyping safetensors "typer>=0.12" rich tqdm \
      "pydantic>=2" "plotly>=5" pandas
  fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); assert torch.cuda.is_available(), 'no CUDA device'"
  "$PY" bench/patching.py --device cuda --tl-seconds "${TL_SECONDS:-120}" --out "$OUT/bench-patching-gpu.json"
  "$PY" - "$OUT/bench-patching-gpu.json" <<'PYEOF'
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
for r in rows:
    if r["model"].startswith("gpt2"):
        verdict = "met" if r["speedup"] >= 40 else "MISSED"
        print(f"GPU target >= 40x, {r['model']} {r['pairs']} {r['sweep']}: {r['speedup']:.1f}x ({verdict}); "
              f"max abs diff {r['max_abs_diff']:.1e}")
PYEOF
} 2>&1 | tee "$LOG"
