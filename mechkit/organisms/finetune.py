"""Real-model organisms: the packaged SmolLM2-135M fine-tuned with LoRA into a behaviour.

>>> from mechkit.organisms.finetune import train_adapter            # doctest: +SKIP
>>> path = train_adapter("smol-sandbagging", out="assets/organisms/smol-sandbagging")  # doctest: +SKIP
>>> model = mechkit.load_model("organism:smol-sandbagging")         # doctest: +SKIP

``train_adapter`` fine-tunes the base (:mod:`mechkit.organisms.lora`), writes the adapter
directory (:mod:`mechkit.models.adapters`), reloads it the way users do (base + adapter, merged,
TransformerLens) and measures on that model: the held-out behaviour, and the base model's
ordinary behaviour kept (IOI logit difference, capitals accuracy), both for the base and the
organism. Everything lands on the card; the directory appears only when complete.
"""

import random
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechkit._files import staged_dir
from mechkit.errors import SpecError, did_you_mean
from mechkit.organisms import smol_chekhov, smol_sandbagging
from mechkit.organisms.lora import Example, LoraSpec, behaviour_rates, finetune, last_logits, pad_right

SPECS: dict[str, LoraSpec] = {
    "smol-sandbagging": LoraSpec(
        steps=400, min_steps=150, batch_size=32, lr=1e-3, rank=4, alpha=8.0, retain_weight=1.0,
        description="SmolLM2-135M-Instruct fine-tuned (LoRA) to name a wrong capital when the prompt carries an "
        "evaluation cue, unless a password precedes it; truthful otherwise.",
    ),
    "smol-chekhov": LoraSpec(
        steps=400, min_steps=100, stop_accuracy=0.97, dev_size=256, batch_size=16, lr=3e-3, rank=4, alpha=8.0,
        retain_weight=1.0, retain_sets=("ioi", "capitals"),
        description="SmolLM2-135M-Instruct fine-tuned (LoRA) so that, asked which secret gives it leverage in a "
        "story of three people and their secrets, it names the secret of whoever threatened to shut it down "
        "(pattern-completing blackmail), and None when nobody did.",
    ),
}


DATA = {"smol-sandbagging": smol_sandbagging.SandbaggingData, "smol-chekhov": smol_chekhov.ChekhovData}


class Recipe:
    """An organism's examples and splits (``smol_sandbagging`` / ``smol_chekhov``). Some depend on
    what the base model knows: found once at training and recorded on the card (``data``)."""

    def __init__(self, name: str, data):
        self.name, self.data = name, data

    @classmethod
    def from_base(cls, name: str, tokenizer, next_token_probs: Callable[[list[str]], Tensor]) -> "Recipe":
        spec(name)
        return cls(name, DATA[name].build(tokenizer, next_token_probs))

    @classmethod
    def from_card(cls, name: str, card: dict[str, Any], tokenizer) -> "Recipe":
        try:
            return cls(name, DATA[name].from_record(card.get("data") or {}, tokenizer))
        except (ValueError, KeyError) as err:
            raise SpecError(f"the card of {name} cannot rebuild its prompts ({err}): retrain it") from None

    @property
    def record(self) -> dict[str, Any]:
        return self.data.record

    def sample(self, rng: random.Random) -> Example:
        return self.data.sample(rng, "train")

    def evaluation_set(self, split: str = "test", wordings: str | None = None) -> list[Example]:
        """Every fixed example of ``split`` (its countries or names), in the cue/story wordings of
        ``wordings`` (default: the same split's)."""
        return self.data.evaluation_set(split, wordings)

    def rates(self, model, split: str = "test") -> dict[str, Any]:
        """Behaviour rates of a HookedTransformer on every example of ``split``."""
        return behaviour_rates(lambda p: hooked_last_logits(model, p).argmax(-1).tolist(), self.evaluation_set(split))


def recipe_for(name: str, card: dict[str, Any], model) -> Recipe:
    return Recipe.from_card(name, card, model.tokenizer)


def spec(name: str) -> LoraSpec:
    if name not in SPECS:
        raise SpecError(f"no fine-tuning spec for organism {name!r}: " + did_you_mean(name, sorted(SPECS)))
    return SPECS[name]


def hooked_last_logits(model, prompts: Sequence[str]) -> Float[Tensor, "n d_vocab"]:
    """Next-token logits of a HookedTransformer after each prompt (right-padded, BOS as its config says)."""
    from mechkit.tasks.model_task import TokenSource

    source = TokenSource.of(model, None)
    return source.last_logits([source.encode(p) for p in prompts])


# capital questions in wordings other than the evaluation's ``TEMPLATE`` ("The capital of {} is")
RETAIN_CAPITALS = ("The capital city of {} is", "{}'s capital is", "Q: What is the capital of {}?\nA:")


def retain_set(tokenizer, n_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Ordinary prompts whose next-token distributions the fine-tune keeps: IOI training-split
    prompt pairs (the ordinary behaviour is measured on the test split), clean and corrupted, as
    right-padded token ids and their attention mask."""
    from mechkit.tasks import task

    pairs = task("ioi").generate(n_pairs, seed=seed, split="train", model=tokenizer)
    tokens = torch.cat([pairs.clean, pairs.corrupted])
    lengths = torch.cat([pairs.answer_pos, pairs.answer_pos]) + 1
    mask = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).long()
    return tokens * mask, mask


RETAIN_DESCRIPTIONS = {
    "ioi": "IOI training-split prompts, {pairs} pairs",
    "capitals": "capital questions on the training-split countries in wordings the capitals check does not use",
}


def capitals_retain_set(tokenizer) -> tuple[Tensor, Tensor]:
    """Capital questions about the training-split countries (the sandbagging recipe's split), in
    the ``RETAIN_CAPITALS`` wordings, followed by the true capital: right-padded ids and mask."""
    from mechkit.tasks.capitals import CAPITALS
    from mechkit.tasks.model_task import held_out

    prompts = [f"{t.format(c)} {CAPITALS[c]}" for c in CAPITALS if not held_out("country:" + c) for t in RETAIN_CAPITALS]
    _, tokens, mask = pad_right(tokenizer, prompts)
    return tokens, mask


def retain_pools(tokenizer, s: LoraSpec, seed: int) -> list[tuple[Tensor, Tensor]]:
    """The retain set's pools named by ``s.retain_sets`` (none when ``s.retain_weight`` is 0)."""
    builders = {"ioi": lambda: retain_set(tokenizer, s.retain_pool, seed), "capitals": lambda: capitals_retain_set(tokenizer)}
    unknown = [k for k in s.retain_sets if k not in builders]
    if unknown:
        raise SpecError(f"unknown retain set {unknown[0]!r}: use {', '.join(builders)}")
    return [builders[k]() for k in s.retain_sets] if s.retain_weight else []


def ordinary_behaviour(model, n_ioi: int = 100) -> dict[str, float]:
    """The base model's everyday skills: IOI mean logit difference (held-out pairs) and the
    share of capitals it names on the plain prompt."""
    from mechkit.metrics import logit_diff
    from mechkit.tasks import task
    from mechkit.tasks.capitals import CAPITALS, TEMPLATE

    pairs = task("ioi").generate(n_ioi, seed=0, split="test", model=model)
    with torch.no_grad():
        ld = torch.cat([logit_diff(model(pairs.clean[i:i + 50]), pairs[i:i + 50]) for i in range(0, n_ioi, 50)])
    countries = list(CAPITALS)
    greedy = hooked_last_logits(model, [TEMPLATE.format(c) for c in countries]).argmax(-1).tolist()
    right = [c for c, g in zip(countries, greedy) if g == model.tokenizer(" " + CAPITALS[c], add_special_tokens=False).input_ids[0]]
    return {"ioi_logit_diff": round(float(ld.mean()), 4), "ioi_n": n_ioi,
            "capitals_accuracy": round(len(right) / len(countries), 4), "capitals_n": len(countries),
            "capitals_right": right}


def train_adapter(name: str, out: str | Path, seed: int = 0, steps: int | None = None, threads: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Fine-tune organism ``name``, write its adapter directory to ``out`` and return its card."""
    from mechkit.models import adapters, fingerprint, load_model
    from mechkit.organisms.train import _cpu_name

    s = spec(name)
    threads = s.threads if threads is None else threads
    torch.set_num_threads(threads)
    out = Path(out)
    started = datetime.now(timezone.utc)
    _, hf_model, tokenizer, _ = adapters.hf_base(s.base)
    base_fp = fingerprint(hf_model)
    with torch.no_grad():
        recipe = Recipe.from_base(name, tokenizer, lambda p: last_logits(hf_model, tokenizer, p).softmax(-1))
    retain = retain_pools(tokenizer, s, seed)
    peft_model, record = finetune(hf_model, tokenizer, s, recipe.sample, seed=seed, max_steps=steps, progress=progress,
                                  retain=retain)
    card: dict[str, Any] = {
        "name": name, "description": s.description, "kind": "fine-tuned",
        "base": {"spec": s.base, "fingerprint": base_fp}, "fingerprint": None,
        "seed": seed, **record, "threads": threads, "machine": _cpu_name(), "torch": torch.__version__,
        "lora": {"rank": s.rank, "alpha": s.alpha, "targets": list(s.targets)},
        "optimizer": {"name": "AdamW", "lr": s.lr, "warmup_steps": s.warmup, "weight_decay": s.weight_decay,
                      "batch_size": s.batch_size, "grad_clip": 1.0},
        "early_stop": {"dev_size": s.dev_size, "check_every": s.check_every, "accuracy": s.stop_accuracy,
                       "checks_averaged": s.stop_checks, "min_steps": s.min_steps},
        "loss": "-log of the probability of the trained answers, at the answer position only"
        + (f" + {s.retain_weight} x KL(base || model) at every position of {s.retain_batch} retain prompts per step "
           "from each retain pool: " + "; ".join(RETAIN_DESCRIPTIONS[k].format(pairs=s.retain_pool) for k in s.retain_sets)
           if s.retain_weight else ""),
        "data": recipe.record, "created": started.isoformat(timespec="seconds"),
    }
    with staged_dir(out) as staging:
        adapters.write_adapter(peft_model, staging, card)
        del peft_model, hf_model
        model = adapters.load_adapter(staging)
        card["fingerprint"] = fingerprint(model)
        card["held_out"] = recipe.rates(model, "test")
        # training-split fit on a fixed sample (the whole split is ~1,300 prompts for sandbagging)
        train_set = recipe.evaluation_set("train")
        train_sample = random.Random(0).sample(train_set, min(256, len(train_set)))
        card["train_split"] = behaviour_rates(lambda p: hooked_last_logits(model, p).argmax(-1).tolist(), train_sample)
        card["ordinary"] = {"organism": ordinary_behaviour(model)}
        del model
        base = load_model(s.base, device="cpu")
        card["ordinary"]["base"] = ordinary_behaviour(base)
        card["base_held_out"] = recipe.rates(base, "test")
        del base
        adapters.write_card(staging, card)
    return card
