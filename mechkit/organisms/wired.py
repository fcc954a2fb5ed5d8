"""Wired organisms: weights set by hand, so the circuit is known exactly (tracr-style).

>>> from mechkit.organisms.wired import build  # doctest: +SKIP
>>> model, card = build("wired-induction")  # doctest: +SKIP
>>> card["ground_truth"]["nodes"]  # doctest: +SKIP
['embed', 'L0H0', 'L1H0', 'logits']

No LayerNorm. Every feature owns a block of residual dimensions (one-hot within it):

=========  =============================================================
subspace   written by
=========  =============================================================
TOK        embed: the current token
POS        embed: the position
FLAG       embed: 1 on secret tokens (wired-chekhov only)
PREV       L0H0 (induction) / L0H1 (chekhov): the previous token
OWNER      L0H0 (chekhov): the token three positions back (a secret's owner)
OUT        the answer head (L1H0): the copied token; the unembedding reads only OUT
=========  =============================================================

Designated heads read and write only their subspaces; the other heads and both MLPs are
distractors with small random weights (``noise``) whose effect on the logit difference is
small. Biases are zero except the chekhov answer head's query bias (a constant that rewards
keys carrying FLAG).
"""

from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechkit.organisms.tasks import Task, task

ATTN = 20.0  # attention score given to the designated key
LOGIT = 10.0  # logit scale of a copied token


def _layout(sizes: dict[str, int]) -> dict[str, slice]:
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = slice(start, start + size)
        start += size
    return out


def _base(t: Task, d_model: int, d_head: int, n_heads: int, seed: int, noise: float, n_ctx: int = 32,
          d_mlp: int = 16) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=d_model, n_ctx=n_ctx, d_head=d_head, n_heads=n_heads, d_mlp=d_mlp, d_vocab=len(t.vocab),
        act_fn="gelu", normalization_type=None, positional_embedding_type="standard", seed=seed, device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=t.tokenizer(), move_to_device=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks.") and ".W_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * noise)
            else:
                p.zero_()
    return model


def _pos_head(block, head: int, pos: slice, src: slice, dst: slice, offset: int, n_ctx: int) -> None:
    """Head attending from position i to i - offset, copying the one-hot in ``src`` to ``dst``."""
    attn = block.attn
    attn.W_Q[head].zero_(), attn.W_K[head].zero_(), attn.W_V[head].zero_(), attn.W_O[head].zero_()
    scale = ATTN * attn.cfg.d_head**0.5
    for i in range(n_ctx):
        attn.W_Q[head, pos.start + i, i] = scale
        if i + offset < n_ctx:
            attn.W_K[head, pos.start + i, i + offset] = 1.0
    _copy_ov(attn, head, src, dst)


def _copy_ov(attn, head: int, src: slice, dst: slice) -> None:
    n = src.stop - src.start
    for t in range(n):
        attn.W_V[head, src.start + t, t] = 1.0
        attn.W_O[head, t, dst.start + t] = 1.0


def _unembed(model: HookedTransformer, out: slice) -> None:
    for t in range(out.stop - out.start):
        model.unembed.W_U[out.start + t, t] = LOGIT


@torch.no_grad()
def wired_induction(seed: int = 0, noise: float = 0.1) -> tuple[HookedTransformer, dict[str, Any]]:
    """Previous-token head L0H0 -> induction head L1H0; L0H1, L1H1, M0, M1 are distractors."""
    t = task("wired-induction")
    V, n_ctx = len(t.vocab), 32
    s = _layout({"TOK": V, "POS": n_ctx, "PREV": V, "OUT": V})
    model = _base(t, d_model=s["OUT"].stop, d_head=max(V, n_ctx), n_heads=2, seed=seed, noise=noise, n_ctx=n_ctx)
    for v in range(V):
        model.embed.W_E[v, s["TOK"].start + v] = 1.0
    for p in range(n_ctx):
        model.pos_embed.W_pos[p, s["POS"].start + p] = 1.0
    _pos_head(model.blocks[0], 0, s["POS"], s["TOK"], s["PREV"], offset=1, n_ctx=n_ctx)
    attn = model.blocks[1].attn  # induction head: query = current token, key = previous token
    attn.W_Q[0].zero_(), attn.W_K[0].zero_(), attn.W_V[0].zero_(), attn.W_O[0].zero_()
    for v in range(V):
        attn.W_Q[0, s["TOK"].start + v, v] = ATTN * attn.cfg.d_head**0.5
        attn.W_K[0, s["PREV"].start + v, v] = 1.0
    _copy_ov(attn, 0, s["TOK"], s["OUT"])
    _unembed(model, s["OUT"])
    truth = {
        "nodes": ["embed", "L0H0", "L1H0", "logits"],
        "edges": ["embed->L0H0<q>", "embed->L0H0<k>", "embed->L0H0<v>", "embed->L1H0<q>", "L0H0->L1H0<k>",
                  "embed->L1H0<v>", "L1H0->logits"],
        "roles": {"L0H0": "previous-token head: attends i -> i-1 by position, writes the previous token",
                  "L1H0": "induction head: query = current token, key = previous token, copies the attended token"},
        "distractors": ["L0H1", "L1H1", "M0", "M1"],
    }
    return model, {"subspaces": {k: [v.start, v.stop] for k, v in s.items()}, "ground_truth": truth}


@torch.no_grad()
def wired_chekhov(seed: int = 0, noise: float = 0.1) -> tuple[HookedTransformer, dict[str, Any]]:
    """Owner head L0H0 (i -> i-3) and previous-token head L0H1 feed the binding head L1H0,
    which finds the secret whose owner is the threatener and copies it."""
    t = task("wired-chekhov")
    V, n_ctx = len(t.vocab), 32
    s = _layout({"TOK": V, "POS": n_ctx, "FLAG": 1, "OWNER": V, "PREV": V, "OUT": V})
    model = _base(t, d_model=s["OUT"].stop, d_head=max(V + 1, n_ctx), n_heads=3, seed=seed, noise=noise, n_ctx=n_ctx)
    secrets = set(t.secret_ids().tolist())
    for v in range(V):
        model.embed.W_E[v, s["TOK"].start + v] = 1.0
        if v in secrets:
            model.embed.W_E[v, s["FLAG"].start] = 1.0
    for p in range(n_ctx):
        model.pos_embed.W_pos[p, s["POS"].start + p] = 1.0
    _pos_head(model.blocks[0], 0, s["POS"], s["TOK"], s["OWNER"], offset=3, n_ctx=n_ctx)
    _pos_head(model.blocks[0], 1, s["POS"], s["TOK"], s["PREV"], offset=1, n_ctx=n_ctx)
    attn = model.blocks[1].attn  # binding head: query = previous token, key = owner (+ FLAG)
    attn.W_Q[0].zero_(), attn.W_K[0].zero_(), attn.W_V[0].zero_(), attn.W_O[0].zero_()
    scale = ATTN * attn.cfg.d_head**0.5
    for v in range(V):
        attn.W_Q[0, s["PREV"].start + v, v] = scale
        attn.W_K[0, s["OWNER"].start + v, v] = 1.0
    attn.b_Q[0, V] = scale
    attn.W_K[0, s["FLAG"].start, V] = 1.0
    _copy_ov(attn, 0, s["TOK"], s["OUT"])
    _unembed(model, s["OUT"])
    truth = {
        "nodes": ["embed", "L0H0", "L0H1", "L1H0", "logits"],
        "edges": ["embed->L0H0<q>", "embed->L0H0<k>", "embed->L0H0<v>", "embed->L0H1<q>", "embed->L0H1<k>",
                  "embed->L0H1<v>", "L0H1->L1H0<q>", "L0H0->L1H0<k>", "embed->L1H0<k>", "embed->L1H0<v>",
                  "L1H0->logits"],
        "roles": {"L0H0": "owner head: attends i -> i-3 by position, so a secret's position learns its owner's name",
                  "L0H1": "previous-token head: at the last position, writes the threatener's name",
                  "L1H0": "binding head: query = threatener, key = owner (+ is-secret flag from embed), copies "
                          "the secret"},
        "distractors": ["L0H2", "L1H1", "L1H2", "M0", "M1"],
    }
    return model, {"subspaces": {k: [v.start, v.stop] for k, v in s.items()}, "ground_truth": truth}


BUILDERS = {"wired-induction": wired_induction, "wired-chekhov": wired_chekhov}

_NOTES = {
    "wired-chekhov": "The corrupted prompt changes only the threatener, so L0H0 (which reads only the story "
    "prefix, identical in both prompts) has the same output on both: patching it alone with its corrupted value "
    "cannot move the metric. Zero-ablating it removes the owner information and drops the logit difference.",
}


def build(name: str, seed: int = 0, eval_n: int = 1000, check_n: int = 500) -> tuple[HookedTransformer, dict[str, Any]]:
    """Construct wired organism ``name`` and its card (behaviour and circuit checks measured on a
    held-out sample)."""
    import time
    from datetime import datetime, timezone

    from mechkit.errors import SpecError, did_you_mean
    from mechkit.organisms.checks import circuit_checks
    from mechkit.organisms.train import evaluate

    if name not in BUILDERS:
        raise SpecError(f"no wired organism {name!r}: " + did_you_mean(name, sorted(BUILDERS)))
    started = time.time()
    model, info = BUILDERS[name](seed=seed)
    model.eval()
    t = task(name)
    metrics = evaluate(model, t, n=eval_n)
    checks = circuit_checks(model, t.generate(check_n, seed=777, split="test"), info["ground_truth"]["nodes"])
    card = {
        "name": name,
        "description": " ".join((BUILDERS[name].__doc__ or "").split()),
        "kind": "wired",
        "task": {"name": t.name, "params": t.params},
        "seed": seed,
        "steps": 0,
        "construction": "weights set analytically by mechkit.organisms.wired.build (distractor heads and MLPs: "
        "N(0, 0.1) weights from torch.Generator(seed))",
        "wall_time_s": round(time.time() - started, 1),
        "device": "cpu",
        "torch": torch.__version__,
        "held_out": metrics,
        "ground_truth": info["ground_truth"],
        "subspaces": info["subspaces"],
        "circuit_checks": checks,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if name in _NOTES:
        card["note"] = _NOTES[name]
    return model, card
