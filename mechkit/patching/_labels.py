"""Axis labels for results: layers, heads, and positions as ``"i:token"``."""

from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs


def position_labels(model: HookedTransformer, pairs: PromptPairs) -> list[str]:
    """``"i:token"`` per position, from the first clean prompt (``"i"`` without a tokenizer)."""
    n = pairs.clean.shape[1]
    if model.tokenizer is None:
        return [str(i) for i in range(n)]
    toks = model.tokenizer.convert_ids_to_tokens(pairs.clean[0].tolist())
    return [f"{i}:{t}" for i, t in enumerate(toks)]


def axis_labels(model: HookedTransformer, pairs: PromptPairs, dims: tuple[str, ...], shape: tuple[int, ...],
                layers: list[int] | None = None, keep: dict[str, list[int]] | None = None) -> dict[str, list[str]]:
    keep = keep or {}
    pos = position_labels(model, pairs)
    out = {}
    for d, n in zip(dims, shape):
        if d == "layer":
            out[d] = [str(layer) for layer in (layers if layers is not None else range(n))]
        elif d == "head":
            out[d] = [f"H{h}" for h in keep.get(d, range(n))]
        elif d in ("pos", "dest_pos", "src_pos"):
            out[d] = [pos[i] for i in keep.get(d, range(n))]
    return out
