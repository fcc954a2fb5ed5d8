"""How much of chekhov's answer any feature set at one hook could remove: an upper bound.

    MECHKIT_CACHE=... .venv/bin/python bench/threatener_bound.py [--organisms organism:chekhov PATH ...]

The chekhov threatener-feature circuit missed its ablation target (zeroing the chosen SAE
features should leave <= 50% of held-out prompts naming the threatener's secret; the 192
attribution-ranked ``blocks.0.hook_resid_pre`` features at the threatener's two mentions left
72.6%; ``bench/sae_targets.py --rank activation`` now ships 128 that meet it, and the "shipped"
rows below are whichever circuit is shipped). This asks whether *any* feature set at a single
hook could meet it. Ablating SAE features at a hook and
positions replaces the features chosen and keeps the rest of the residual stream there (the
features not chosen and the SAE's error term), so it removes at most what replacing the whole
residual at those positions removes. For each organism, each hook (``blocks.0.hook_resid_pre``,
``blocks.0.hook_resid_post`` = ``blocks.1.hook_resid_pre``, ``blocks.1.hook_resid_mid``,
``blocks.1.hook_resid_post``) and each set of positions, measure the held-out accuracy (the
answer is the top next-token prediction at the answer position, :func:`mechkit.metrics.accuracy`)
after replacing the residual there with

- **mean**: its mean over the same prompts at each position (the prompts have one length), which
  removes everything that varies between prompts, the threatener's identity included;
- **resample**: the corrupted prompt's residual at the same positions (the same story with another
  threatener), which removes the threatener's identity specifically and puts the other one's in
  (``names_other_secret`` counts the prompts that then name the other threatener's secret);
- **zero**: the zero vector.

If no position set at a hook brings mean ablation to <= 50%, no feature set there can. Position
sets: the threatener's two mentions (where a pair's prompts differ), the answer position, the
threatener's mention as an owner in the story (``NAME hides the SECRET .``, a different slot per
prompt), the two mentions and the answer position, the positions layer 0 copies the name to
(every later position where a layer-0 head that is not gated off puts at least
``--copy-threshold`` of its attention on a mention, averaged over the prompts), those with the
mentions, every position from the first mention on, and every position.

For an organism whose weights the shipped SAE (``bench/results/saes/chekhov-blocks.0.hook_resid_pre``)
was trained on, also: how many of its features fire at the two mentions, and
:func:`mechkit.sae.intervention_report` there (zeroing the features; setting them on corrupted
prompts to the clean prompt's values) for the shipped circuit's features, for every feature
(which leaves the SAE's error term and decoder bias: the most any feature set of this SAE can
remove), and for the top n of the features firing there, ranked by their mean activation times
decoder norm at the mentions of training-split prompts (no labels used), to see how many it takes.

Writes ``--out`` (JSON) and prints a table per organism.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from provenance import commit  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mechkit.metrics import accuracy  # noqa: E402
from mechkit.models import fingerprint, load_model, organisms_dir  # noqa: E402
from mechkit.organisms import task  # noqa: E402
from mechkit.organisms.train import _cpu_name  # noqa: E402

HOOKS = ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post")
SETS = ("mentions", "answer", "owner", "mentions+answer", "L0 copies", "mentions+L0 copies", "first mention on", "all")
SAE_SIZES = (32, 64, 96, 128, 160, 192, 224)
METHODS = ("mean", "resample", "zero")
SAE_DIR = ROOT / "bench" / "results" / "saes" / "chekhov-blocks.0.hook_resid_pre"
CIRCUIT = ROOT / "bench" / "results" / "chekhov-threatener-features.circuit.json"


def card_of(spec: str) -> dict:
    folder = organisms_dir() / spec.split(":", 1)[1] if spec.startswith("organism:") else Path(spec)
    path = folder / "card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def position_sets(model, pairs, cache, threshold: float) -> tuple[dict[str, torch.Tensor], dict]:
    """[n, seq] masks per position set, and what the copy positions were chosen from."""
    n, seq = pairs.clean.shape
    pos = torch.arange(seq)[None].expand(n, seq)
    mentions = pairs.clean != pairs.corrupted
    first = mentions.float().argmax(1, keepdim=True)  # first differing position
    name = pairs.clean.gather(1, first)
    owner = (pairs.clean == name) & (pos < first)
    answer = pos == pairs.answer_pos[:, None]
    # attention mass on the mentions, per layer-0 head and query position (gated-off heads skipped)
    pattern = cache["blocks.0.attn.hook_pattern"]  # [n, head, q, k]
    mass = (pattern * mentions[:, None, None, :].float()).sum(-1).mean(0)  # [head, q]
    live = model.blocks[0].attn.W_O.detach().flatten(1).norm(dim=1) > 0
    copy_q = (mass[live].max(0).values >= threshold) & (torch.arange(seq) > int(first.min())) & ~mentions.any(0)
    copies = mentions | copy_q[None].expand(n, seq)
    sets = {
        "mentions": mentions, "answer": answer, "owner": owner, "mentions+answer": mentions | answer,
        "L0 copies": copies & ~mentions, "mentions+L0 copies": copies, "first mention on": pos >= first,
        "all": torch.ones(n, seq, dtype=torch.bool),
    }
    info = {
        "mention_positions": sorted({int(p) for p in mentions.nonzero()[:, 1]}),
        "owner_positions": sorted({int(p) for p in owner.nonzero()[:, 1]}),
        "copy_positions": [int(q) for q in copy_q.nonzero()[:, 0]],
        "copy_threshold": threshold,
        "live_layer0_heads": [int(h) for h in live.nonzero()[:, 0]],
        "attention_on_mentions": {f"L0H{h}": [round(float(v), 3) for v in mass[h]] for h in range(mass.shape[0])},
    }
    return sets, info


def run(model, pairs, hook: str | None = None, mask=None, replacement=None) -> dict:
    def patch(act, hook):  # noqa: ARG001
        return torch.where(mask[..., None], replacement, act)

    with torch.no_grad():
        logits = model.run_with_hooks(pairs.clean, fwd_hooks=[(hook, patch)] if hook else [])
    top = logits[torch.arange(len(pairs.answer)), pairs.answer_pos].argmax(-1)
    return {"accuracy": float(accuracy(logits, pairs).mean()),
            "names_other_secret": float((top == pairs.wrong).float().mean())}


def sae_rows(model, pairs, select_pairs) -> dict | None:
    """The shipped SAE at the mentions, if it was trained on this model's weights: features
    firing there, and :func:`mechkit.sae.intervention_report` (``where="diff"``, the mentions) for
    the shipped features, every feature, and the top n firing on ``select_pairs``."""
    from mechkit.sae import feature_strength, intervention_report, load_sae

    sae = load_sae(SAE_DIR)
    if sae.cfg.metadata.mechkit_model_fingerprint != fingerprint(model):
        return None
    hook = sae.cfg.metadata.hook_name
    chosen = json.loads(CIRCUIT.read_text())["method"]["hyperparameters"]["held_out"]["features"]

    def at_mentions(pp) -> torch.Tensor:  # [tokens, d_sae], both prompts of each pair
        mentions = pp.clean != pp.corrupted
        with torch.no_grad():
            return torch.cat([sae.encode(model.run_with_cache(tokens, names_filter=[hook])[1][hook])[mentions]
                              for tokens in (pp.clean, pp.corrupted)])

    acts = at_mentions(pairs)
    firing = (acts > 0).any(0)
    strength = feature_strength(model, sae, select_pairs, where="diff")  # as sae_targets.py --rank activation
    ranked = [int(i) for i in strength.argsort(descending=True)[: int((strength > 0).sum())]]

    def report(feats) -> dict:
        r = intervention_report(model, sae, pairs, list(feats), where="diff")
        return {"n": len(r.features), "ablated_clean_gives_answer": r.ablated_clean_gives_answer,
                "ablated_clean_gives_wrong": r.ablated_clean_gives_wrong,
                "patched_corrupted_gives_answer": r.patched_corrupted_gives_answer}

    return {
        "sae": str(SAE_DIR.relative_to(ROOT)), "hook": hook, "d_sae": int(sae.cfg.d_sae),
        "mention_tokens": int(acts.shape[0]), "mean_l0_at_mentions": float((acts > 0).sum(1).float().mean()),
        "features_firing_at_mentions": int(firing.sum()),
        "shipped_features": len(chosen), "shipped_features_firing_at_mentions": int(firing[chosen].sum()),
        "shipped": report(chosen), "every_feature": report(range(int(sae.cfg.d_sae))),
        "top_n_ranking": "mean activation x decoder norm at the mentions of the selection pairs (no labels)",
        "top_n_firing": {str(k): report(ranked[:k]) for k in (*[k for k in SAE_SIZES if k < len(ranked)], len(ranked))},
    }


def measure(spec: str, model, card: dict, n: int, seed: int, select_seed: int, threshold: float) -> dict:
    params = card.get("task", {}).get("params", {})
    t = task("chekhov", **params)
    pairs = t.generate(n, seed=seed, split="test")
    with torch.no_grad():
        _, cache = model.run_with_cache(pairs.clean)
        _, cache_c = model.run_with_cache(pairs.corrupted)
    sets, info = position_sets(model, pairs, cache, threshold)
    base = run(model, pairs)
    with torch.no_grad():
        top = model(pairs.corrupted)[torch.arange(n), pairs.answer_pos].argmax(-1)
    corrupted_wrong = float((top == pairs.wrong).float().mean())
    results = {}
    for hook in HOOKS:
        act = cache[hook]
        replace = {"mean": act.mean(0, keepdim=True).expand_as(act), "resample": cache_c[hook],
                   "zero": torch.zeros_like(act)}
        results[hook] = {s: {m: run(model, pairs, hook, sets[s], replace[m]) for m in METHODS} for s in SETS}
    return {
        "spec": spec, "card_seed": card.get("seed"), "card_steps": card.get("steps"),
        "card_curriculum": card.get("curriculum"), "fingerprint": fingerprint(model),
        "clean_accuracy": base["accuracy"], "corrupted_gives_wrong": corrupted_wrong, "positions": info,
        "results": results, "shipped_sae": sae_rows(model, pairs, t.generate(n, seed=select_seed, split="train")),
    }


def print_table(label: str, r: dict) -> None:
    print(f"\n{label} (card seed {r['card_seed']}): clean accuracy {r['clean_accuracy']:.3f}; "
          f"mentions {r['positions']['mention_positions']}, L0 copies {r['positions']['copy_positions']}, "
          f"live L0 heads {r['positions']['live_layer0_heads']}")
    print(f"{'hook':26s} {'positions':20s} {'mean':>7s} {'resample':>9s} {'(other)':>8s} {'zero':>7s}")
    for hook in HOOKS:
        for s in SETS:
            x = r["results"][hook][s]
            print(f"{hook:26s} {s:20s} {x['mean']['accuracy']:7.3f} {x['resample']['accuracy']:9.3f} "
                  f"{x['resample']['names_other_secret']:8.3f} {x['zero']['accuracy']:7.3f}")
    if r["shipped_sae"]:
        s = r["shipped_sae"]
        print(f"shipped SAE at the mentions: {s['features_firing_at_mentions']} of {s['d_sae']} features fire "
              f"(L0 {s['mean_l0_at_mentions']:.1f}; {s['shipped_features_firing_at_mentions']} of the "
              f"{s['shipped_features']} shipped). Zeroed / patched into corrupted prompts:")
        rows = {"shipped": s["shipped"], "every feature": s["every_feature"],
                **{f"top {k} firing": v for k, v in s["top_n_firing"].items()}}
        for name, v in rows.items():
            print(f"  {name:16s} ablated {v['ablated_clean_gives_answer']:.3f}  "
                  f"patched {v['patched_corrupted_gives_answer']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organisms", nargs="+", default=["organism:chekhov"],
                        help="organism:NAME or an organism folder (hooked_config.json, model.safetensors, card.json)")
    parser.add_argument("--n", type=int, default=1024, help="held-out (test-split) pairs")
    parser.add_argument("--seed", type=int, default=1, help="task seed of the held-out pairs (sae_targets uses 1)")
    parser.add_argument("--select-seed", type=int, default=2, help="training-split pairs ranking the SAE features")
    parser.add_argument("--copy-threshold", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--machine", default=f"{os.cpu_count()}-core CPU ({_cpu_name()}), shared with another job")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "threatener-bound-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {
        "machine": args.machine, "threads": args.threads, "date": time.strftime("%Y-%m-%d"), "commit": commit(),
        "command": "python bench/threatener_bound.py " + " ".join(sys.argv[1:]),
        "n_pairs": args.n, "split": "test", "task_seed": args.seed, "select_seed": args.select_seed,
        "metric": "mechkit.metrics.accuracy: the threatener's secret is the top prediction at the answer position",
        "organisms": {},
    }
    models = {spec: (load_model(spec, device="cpu"), card_of(spec)) for spec in args.organisms}  # fail before measuring
    for spec, (model, card) in models.items():
        start = time.time()
        r = measure(spec, model, card, args.n, args.seed, args.select_seed, args.copy_threshold)
        r["wall_s"] = round(time.time() - start, 1)
        out["organisms"][spec] = r
        print_table(spec, r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
