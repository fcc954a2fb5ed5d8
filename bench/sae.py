"""Throughput of mechkit's SAE pipeline (cache + train) vs SAELens's LanguageModelSAETrainingRunner.

    python bench/sae.py --model organism:sandbagging --hook blocks.1.hook_resid_mid --steps 300

Both runs: the same model, hook, TopK architecture (d_sae = 8 x d_model), batch size, step
count and token rows (the task's clean and corrupted prompts, concatenated and cut into rows of
``--context`` tokens), each reading every training token once. tokens/s = training tokens /
wall time of the whole pipeline (activations + training). Both SAEs are then scored by
``mechkit.sae.evaluate_sae`` on held-out prompt pairs (CE at the task's answer). Prints and writes JSON (``--out``).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mechkit.models import load_model
from mechkit.sae import TrainConfig, evaluate_sae, load_sae, train_sae, write_cache
from mechkit.sae.train import dead_window


def token_rows(model, task_name: str, n_rows: int, context: int, seed: int, split: str) -> torch.Tensor:
    """[n_rows, context] rows cut from the task's prompts (clean and corrupted, padding dropped)."""
    from mechkit.organisms import task

    t = task(task_name)
    parts, n = [], 0
    while n < n_rows * context:
        pairs = t.generate(4096, seed=seed + len(parts), split=split)
        for prompts in (pairs.clean, pairs.corrupted):
            for row, last in zip(prompts, pairs.answer_pos.tolist()):
                parts.append(row[: last + 1])
                n += last + 1
    return torch.cat(parts)[: n_rows * context].reshape(n_rows, context)


def run_mechkit(model, rows, hook, cfg, work: Path) -> tuple[float, Path]:
    start = time.perf_counter()
    cache = write_cache(model, rows, work / "cache", [hook], batch_size=256, progress=False)
    train_sae(cache, hook, work / "mechkit_sae", cfg)
    return time.perf_counter() - start, work / "mechkit_sae"


def run_sae_lens(model, rows, hook, cfg: TrainConfig, work: Path, context: int) -> tuple[float, Path]:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
    from sae_lens.config import LoggingConfig
    from sae_lens.saes import TopKTrainingSAEConfig

    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=cfg.expansion * model.cfg.d_model, k=cfg.k,
                                  device=cfg.device),
        model_name="organism", hook_name=hook, dataset_path="", is_dataset_tokenized=True, streaming=False,
        context_size=context, prepend_bos=False, training_tokens=cfg.steps * cfg.batch_size,
        train_batch_size_tokens=cfg.batch_size, store_batch_size_prompts=256, n_batches_in_buffer=max(20, 2 * cfg.batch_size // context),
        lr=cfg.lr, device=cfg.device, seed=cfg.seed, dead_feature_window=dead_window(cfg.steps) if cfg.dead_feature_window is None else cfg.dead_feature_window,
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=str(work / "sae_lens_sae"),
        n_batches_for_norm_estimate=10, verbose=False,
    )
    start = time.perf_counter()
    LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model).run()
    return time.perf_counter() - start, work / "sae_lens_sae"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism:sandbagging")
    ap.add_argument("--task", default=None, help="task generating the tokens (default: the organism's name)")
    ap.add_argument("--hook", default="blocks.1.hook_resid_mid")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="mechkit-out/bench_sae.json")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task_name = args.task or args.model.removeprefix("organism:")
    model = load_model(args.model, device=args.device)
    n_tokens = args.steps * args.batch_size
    rows = token_rows(model, task_name, -(-n_tokens // args.context), args.context, seed=0, split="train")
    from mechkit.organisms import task

    held_out = task(task_name).generate(512, seed=99, split="test")  # CE/KL scored at the answer
    cfg = TrainConfig(architecture="topk", expansion=8, k=args.k, steps=args.steps, batch_size=args.batch_size,
                      lr=3e-4, device=args.device)
    results = {"model": args.model, "hook": args.hook, "architecture": "topk", "k": args.k,
               "d_sae": 8 * model.cfg.d_model, "steps": args.steps, "batch_size": args.batch_size,
               "training_tokens": n_tokens, "device": args.device, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, fn in (("sae_lens", lambda: run_sae_lens(model, rows, args.hook, cfg, work, args.context)),
                         ("mechkit", lambda: run_mechkit(model, rows, args.hook, cfg, work))):
            seconds, path = fn()
            ev = evaluate_sae(model, load_sae(path, device=args.device), held_out, hook=args.hook)
            results[name] = {"seconds": round(seconds, 2), "tokens_per_s": round(n_tokens / seconds),
                             "explained_variance": round(ev.explained_variance, 4),
                             "ce_recovered": round(ev.ce_recovered, 4), "l0": round(ev.l0, 2)}
    results["ratio_mechkit_over_sae_lens"] = round(results["mechkit"]["tokens_per_s"] / results["sae_lens"]["tokens_per_s"], 3)
    print(json.dumps(results, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
