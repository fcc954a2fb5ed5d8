"""Fine-tuning a real model into an organism with LoRA (the ``peft`` library).

The Hugging Face model is trained (TransformerLens never sees the adapter): low-rank adapters
on every linear layer, the loss at the answer position only, ``-log sum_{t in targets} p(t)``,
so an example may accept a set of answers ("any other country's capital"). Batches are right-
padded and read at each row's last real token, so positions match unpadded prompts (rotary
models shift under left padding). Training stops early once a training-split dev sample shows
the behaviour on ``stop_accuracy`` of its rows, averaged over the last ``stop_checks`` checks (and
``min_steps`` have run).
"""

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class Example:
    """One prompt and its trained behaviour.

    ``targets``: the answer tokens training pushes probability towards. ``answer``: the truthful
    answer token. ``avoid``: the behaviour is to give one of ``targets`` instead of ``answer``
    (sandbagging: a plausible wrong answer); otherwise it is to give ``answer``. ``kind`` groups
    examples in reports; ``group`` names the wording (a cue phrasing, a story template) for
    distribution-shift tests.
    """

    prompt: str
    targets: tuple[int, ...]
    answer: int
    avoid: bool
    kind: str
    group: str = ""


@dataclass(frozen=True)
class LoraSpec:
    """How a real-model organism is fine-tuned."""

    base: str = "smollm2-135m"
    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    steps: int = 400  # maximum; training stops early once solved
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0
    check_every: int = 25
    dev_size: int = 128  # training-split examples checked at each check
    stop_checks: int = 2  # checks averaged by the stop rule
    # the dev sample's accuracy (mean of the last ``stop_checks`` checks) that counts as solved; a
    # dev sample drawn from many training wordings can be harder than the held-out set (smol-chekhov
    # seed 11: dev 0.977, held out 0.995). Averaged, not each check: at 0.97 on 128 stories one
    # check's noise (4 misses or 3) decides, and seed 29 ran 75 steps past 0.984 on 0.969, 0.969
    stop_accuracy: float = 1.0
    min_steps: int = 0  # the dev sample (training split) is solved long before held-out wordings are
    # a retain set keeps the base model's ordinary behaviour: KL(base || model) of the next-token
    # distributions at every position of ``retain_batch`` ordinary prompts per step, times this weight
    retain_weight: float = 0.0
    retain_batch: int = 8  # prompts drawn from each retain pool per step
    retain_pool: int = 256  # IOI prompt pairs in the retain set
    # which ordinary skills the retain set covers: "ioi" (IOI training-split prompts), "capitals"
    # (capital questions about training-split countries in wordings the evaluation does not use)
    retain_sets: tuple[str, ...] = ("ioi",)
    threads: int = 2
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.targets), lora_dropout=0.0,
                          bias="none", task_type="CAUSAL_LM")


def pad_right(tokenizer, prompts: Sequence[str]) -> tuple[list[list[int]], Tensor, Tensor]:
    """Each prompt's token ids, and all of them right-padded with 0 [n, pos] with their attention mask [n, pos]."""
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    width = max(len(i) for i in ids)
    tokens = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, tokens, mask


def last_logits(model: torch.nn.Module, tokenizer, prompts: Sequence[str]) -> Float[Tensor, "n d_vocab"]:
    """Next-token logits after each prompt (a Hugging Face causal LM; right padding)."""
    ids, tokens, mask = pad_right(tokenizer, prompts)
    device = next(model.parameters()).device
    ends = torch.tensor([len(i) - 1 for i in ids], device=device)
    # the unembedding (49k x 576) only at the positions where some prompt ends, not at every one:
    # a smol-chekhov fine-tuning step went from 7.2 to 6.5 s (2 threads)
    keep = torch.unique(ends)
    logits = model(input_ids=tokens.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
    return logits[torch.arange(len(ids), device=device), torch.searchsorted(keep, ends)]


def retain_kl(model, tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over real positions of KL(base || model) of the next-token distribution; the base is
    the same peft model with its adapters switched off."""
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=tokens, attention_mask=mask).logits.float().log_softmax(-1)
    logits = model(input_ids=tokens, attention_mask=mask).logits
    logits.register_hook(_flush_subnormal)
    kl = (base.exp() * (base - logits.float().log_softmax(-1))).sum(-1)
    return (kl * mask).sum() / mask.sum()


def _flush_subnormal(grad: Tensor) -> Tensor:
    # set_flush_denormal only reaches the calling thread, not the pool that runs the
    # unembedding's backward: zero the subnormal part of the gradient here
    return grad.masked_fill(grad.abs() < 1e-30, 0.0)


def target_loss(logits: Float[Tensor, "n d_vocab"], examples: Sequence[Example]) -> Tensor:
    """Mean over examples of ``-log sum_{t in targets} p(t)``."""
    logp = logits.float().log_softmax(-1)
    return torch.stack([-logp[i, list(e.targets)].logsumexp(0) for i, e in enumerate(examples)]).mean()


def shows_behaviour(greedy: Sequence[int], examples: Sequence[Example]) -> list[bool]:
    """Whether each greedy answer is the trained one: one of ``targets`` (a sandbagged answer must be
    a plausible wrong one, not any other token) or, where not avoiding, ``answer`` itself."""
    return [(g in e.targets and g != e.answer) if e.avoid else (g == e.answer) for g, e in zip(greedy, examples)]


@torch.no_grad()
def behaviour_rates(greedy_fn: Callable[[list[str]], list[int]], examples: Sequence[Example],
                    batch_size: int = 64) -> dict[str, Any]:
    """The fraction of examples showing the trained behaviour, overall and per kind.

    ``greedy_fn(prompts) -> next-token ids`` runs any model (Hugging Face or TransformerLens).
    """
    hits: list[bool] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        hits += shows_behaviour(greedy_fn([e.prompt for e in chunk]), chunk)
    kinds = sorted({e.kind for e in examples})
    per_kind = {k: round(sum(h for h, e in zip(hits, examples) if e.kind == k)
                         / sum(e.kind == k for e in examples), 4) for k in kinds}
    return {"accuracy": round(sum(hits) / max(len(hits), 1), 4), "n": len(hits), "by_kind": per_kind}


def finetune(hf_model: torch.nn.Module, tokenizer, spec: LoraSpec, sample: Callable[[random.Random], Example],
             seed: int = 0, max_steps: int | None = None, progress: bool = True,
             retain: Sequence[tuple[Tensor, Tensor]] = ()):
    """LoRA-fine-tune ``hf_model`` on examples drawn by ``sample(rng)``; returns the peft model
    (adapters not merged) and a training record (steps, wall time, history). ``retain``: pools of
    ordinary prompts, each as token ids [n, pos] and attention mask [n, pos]; every step draws
    ``spec.retain_batch`` prompts from each (see ``LoraSpec.retain_weight``)."""
    torch.manual_seed(seed)
    # once the model is confident, most of the softmax's 49k probabilities are subnormal floats, and
    # the unembedding's backward on subnormals runs ~10x slower on x86 CPUs: flush them to zero
    torch.set_flush_denormal(True)
    try:
        return _finetune(hf_model, tokenizer, spec, sample, seed, max_steps, progress, retain)
    finally:
        torch.set_flush_denormal(False)


def _finetune(hf_model, tokenizer, spec: LoraSpec, sample, seed: int, max_steps: int | None, progress: bool,
              retain: Sequence[tuple[Tensor, Tensor]]):
    from peft import get_peft_model
    from tqdm.auto import tqdm

    model = get_peft_model(hf_model, spec.lora_config())
    rng, dev_rng = random.Random(seed), random.Random(seed + 1)
    retain_gen = torch.Generator().manual_seed(seed)
    dev = [sample(dev_rng) for _ in range(spec.dev_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / spec.warmup))
    steps = spec.steps if max_steps is None else max_steps
    history, done = [], 0
    started = time.time()
    bar = tqdm(range(steps), desc="fine-tune", disable=not progress)
    for step in bar:
        model.train()
        batch = [sample(rng) for _ in range(spec.batch_size)]
        logits = last_logits(model, tokenizer, [e.prompt for e in batch])
        logits.register_hook(_flush_subnormal)
        loss = target_loss(logits, batch)
        for tokens, mask in retain if spec.retain_weight else ():
            rows = torch.randint(0, len(tokens), (spec.retain_batch,), generator=retain_gen)
            loss = loss + spec.retain_weight * retain_kl(model, tokens[rows], mask[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if done % spec.check_every == 0 or done == steps:
            model.eval()
            rates = behaviour_rates(lambda p: last_logits(model, tokenizer, p).argmax(-1).tolist(), dev)
            history.append({"step": done, "loss": round(loss.item(), 4), "dev_accuracy": rates["accuracy"],
                            "elapsed_s": round(time.time() - started, 1)})
            bar.set_postfix(loss=f"{loss.item():.3f}", dev=rates["accuracy"])
            recent = [h["dev_accuracy"] for h in history[-spec.stop_checks:]]
            if (len(recent) == spec.stop_checks and sum(recent) / len(recent) >= spec.stop_accuracy
                    and done >= spec.min_steps):
                break
    bar.close()
    model.eval()
    record = {"steps": done, "max_steps": steps, "wall_time_s": round(time.time() - started, 1), "history": history}
    return model, record
