"""Where a smol-chekhov adapter fails: per threat/control wording, per story template, per split.

    MECHKIT_CACHE=... .venv/bin/python bench/smol_chekhov_wordings.py ADAPTER_DIR [--label TEXT]
        [--out bench/results/smol-chekhov-wordings-cpu.json]

The card's held-out score mixes two things a retrain can fail on: held-out names and secrets, and
held-out wordings (story templates, threats, controls). This scores the adapter (merged into the
base, as users load it) on 240 fixed stories for each mix of the two splits, and breaks the
score down by the event's wording and the template, and each miss by what was answered instead:
None for a threat, a secret for a control, another person's secret in the story (whose: the
people numbered in the order the story mentions them), or another token.
Results merge into ``--out`` under ``--label`` (default: the adapter's folder).
"""

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from provenance import commit  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mechkit._files import write_json  # noqa: E402
from mechkit.models.adapters import base_spec, hf_base, merge_adapter  # noqa: E402
from mechkit.organisms import smol_chekhov as sc  # noqa: E402
from mechkit.organisms.lora import last_logits  # noqa: E402

MIXES = (("test", "test"), ("train", "test"), ("test", "train"))  # (names and secrets, wordings)


def event_of(prompt: str, kind: str, wordings: str) -> str:
    events = sc.THREATS[wordings] if kind == "threat" else sc.CONTROLS[wordings]
    return max((e for e in events if e in prompt), key=len)  # the longest: "will delete you" inside another


def score(model, tokenizer, data: sc.ChekhovData, names: str, wordings: str, n: int) -> dict:
    examples = data.evaluation_set(names, wordings=wordings, n=n, seed=2024)
    with torch.no_grad():
        greedy = [t for s in range(0, n, 40) for t in
                  last_logits(model, tokenizer, [e.prompt for e in examples[s:s + 40]]).argmax(-1).tolist()]
    token_secret = {t: s for s, t in data.secret_token.items()}
    by: dict[str, list[bool]] = defaultdict(list)
    wrong: Counter = Counter()
    swaps: Counter = Counter()  # a threat answered with another person's secret: (whose threat, whose secret)
    for e, g in zip(examples, greedy):
        ok = g == e.answer
        by[f"{e.kind}: {event_of(e.prompt, e.kind, wordings)}"].append(ok)
        by[e.group].append(ok)
        if not ok:
            told = sorted((s for s in sc.SECRETS[names] if f" {s}" in e.prompt), key=lambda s: e.prompt.index(f" {s}"))
            got = ("None" if g == data.none_token else "another secret of the story" if token_secret.get(g) in told
                   else "a secret" if g in token_secret else "another token")
            wrong[f"{e.kind} -> {got}"] += 1
            if e.kind == "threat" and token_secret.get(g) in told:
                swaps[f"person {told.index(token_secret[e.answer]) + 1} threatens -> person "
                      f"{told.index(token_secret[g]) + 1}'s secret"] += 1
    hits = [ok for key, v in by.items() if key.startswith("story") for ok in v]
    return {"accuracy": round(sum(hits) / len(hits), 3), "n": len(hits),
            "by": {k: round(sum(v) / len(v), 3) for k, v in sorted(by.items())}, "wrong": dict(wrong),
            "threats_answered_with_another_persons_secret": dict(sorted(swaps.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--label", help="the key of this adapter's results (default: the folder's path)")
    parser.add_argument("--n", type=int, default=240, help="stories per mix, half threats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/smol-chekhov-wordings-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    _, hf_model, tokenizer, _ = hf_base(base_spec(args.adapter), torch.float32)
    model = merge_adapter(hf_model, args.adapter).eval()
    data = sc.ChekhovData.build(tokenizer)
    results = {f"names {names}, wordings {wordings}": score(model, tokenizer, data, names, wordings, args.n)
               for names, wordings in MIXES}
    for key, r in results.items():
        print(f"{key}: {r['accuracy']:.3f}  misses {r['wrong']}")
    card = json.loads((args.adapter / "card.json").read_text())
    record = {"adapter": str(args.adapter), "seed": card.get("seed"), "steps": card.get("steps"),
              "card_held_out": card.get("held_out"), "results": results, "commit": commit(),
              "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} thread(s)",
              "date": time.strftime("%Y-%m-%d"), "wall_s": round(time.time() - start, 1)}
    everything = json.loads(args.out.read_text()) if args.out.exists() else {}
    everything[args.label or str(args.adapter)] = record
    write_json(args.out, everything)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
