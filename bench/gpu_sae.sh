#!/usr/bin/env bash
# GPU throughput of SAE training at GPT-2 size: SAELens's defaults (fp32) vs mechkit's (TF32 + bf16 autocast).
#
# Run from a copy of the repo on a CUDA box:   OUT=/tmp/sae-bench bash bench/gpu_sae.sh
# Writes "$OUT/gpu_sae.json". Both runs use SAELens's TopK training SAE and SAETrainer on the same
# synthetic activations (d_in 768, d_sae 24576, k 64, batch 4096); FLOP per token = 6 * d_in * d_sae.
# Sizes can be overridden for a quick check: D_IN, D_SAE, K, BATCH, STEPS, DEVICE.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/mechkit-out/gpu_sae}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

# torch only if missing (unpinned); never replace an installed torch.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch
if ! "$PY" -c "import mechkit.sae" 2>/dev/null; then
  TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  echo "torch==$TORCH_VERSION" > "$OUT/constraints.txt"
  "$PY" -m pip install -q -c "$OUT/constraints.txt" -e . || {
    "$PY" -m pip install -q --no-deps -e .
    "$PY" -m pip install -q -c "$OUT/constraints.txt" "transformer-lens>=3.9,<4" "sae-lens>=6.54,<7" transformers \
      tokenizers huggingface-hub einops jaxtyping safetensors "typer>=0.12" rich tqdm "pydantic>=2" "plotly>=5"
  }
fi

timeout 230 "$PY" - "$OUT/gpu_sae.json" <<'EOF'
import json, os, sys, time

import torch
import sae_lens
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from mechkit.sae.train import TrainConfig, _matmul_precision, _trainer_config, build_training_sae

device = os.environ.get("DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
D_IN, D_SAE = int(os.environ.get("D_IN", 768)), int(os.environ.get("D_SAE", 24576))
K, BATCH, STEPS = int(os.environ.get("K", 64)), int(os.environ.get("BATCH", 4096)), int(os.environ.get("STEPS", 150))
WARMUP = 10
flop_per_token = 6 * D_IN * D_SAE


def make_pool(n_pool=17, seed=0):
    """Activations with a sparse ground-truth dictionary, made once on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    dictionary = torch.randn(4 * D_IN, D_IN, device=device, generator=g) / D_IN**0.5
    pool = []
    for _ in range(n_pool):
        codes = torch.rand(BATCH, 4 * D_IN, device=device, generator=g) < (32 / (4 * D_IN))
        pool.append((codes.float() * torch.rand(BATCH, 4 * D_IN, device=device, generator=g)) @ dictionary)
    return pool[:-1], pool[-1]


POOL, HELD_OUT = make_pool()


def synthetic_batches():
    i = 0
    while True:
        yield POOL[i % len(POOL)]
        i += 1


def timed_fit(make_trainer):
    warm = make_trainer(WARMUP)
    warm.fit()  # kernels, allocator and autotuning warm up
    trainer = make_trainer(STEPS)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.fit()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = HELD_OUT
        ev = 1 - (trainer.sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    tok_s = STEPS * BATCH / seconds
    return {"seconds": round(seconds, 4), "step_ms": round(1000 * seconds / STEPS, 3), "tokens_per_s": round(tok_s),
            "tflop_per_s": round(tok_s * flop_per_token / 1e12, 2), "explained_variance": round(float(ev), 4)}


def sae_lens_default(steps):
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's and SAELens's default: full fp32
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, device=device))
    cfg = SAETrainerConfig(total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=3e-4,
                           lr_end=3e-5, device=device, logger=LoggingConfig(log_to_wandb=False))
    return SAETrainer(cfg=cfg, sae=sae, data_provider=synthetic_batches())


mk_cfg = TrainConfig(architecture="topk", d_sae=D_SAE, k=K, batch_size=BATCH, device=device, lr=3e-4)


def mechkit_default(steps):
    cfg = TrainConfig(**{**mk_cfg.__dict__, "steps": steps})
    sae = build_training_sae(cfg, D_IN)
    return SAETrainer(cfg=_trainer_config(cfg), sae=sae, data_provider=synthetic_batches())


results = {"device": torch.cuda.get_device_name() if device == "cuda" else device, "torch": torch.__version__,
           "sae_lens": sae_lens.__version__, "d_in": D_IN, "d_sae": D_SAE, "k": K, "batch": BATCH, "steps": STEPS,
           "flop_per_token": flop_per_token}
results["sae_lens_fp32"] = timed_fit(sae_lens_default)
with _matmul_precision(mk_cfg):
    results["mechkit_tf32_bf16"] = timed_fit(mechkit_default)
results["mechkit_autocast"] = mk_cfg.autocast if mk_cfg.autocast is not None else device == "cuda"
results["speedup"] = round(results["mechkit_tf32_bf16"]["tokens_per_s"] / results["sae_lens_fp32"]["tokens_per_s"], 3)
print(json.dumps(results, indent=1))
with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=1)
EOF
