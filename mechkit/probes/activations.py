"""Labelled prompts and the activations a probe reads: one vector per prompt, per hook.

>>> import mechkit
>>> from mechkit.probes import Labelled, collect, hook_names
>>> model = mechkit.load_model("organism:sandbagging")                          # doctest: +SKIP
>>> data = Labelled.from_pairs(mechkit.tasks.task("sandbagging").generate(64))  # doctest: +SKIP
>>> acts = collect(model, data, hook_names(model))                              # doctest: +SKIP
>>> acts["blocks.1.hook_resid_post"].shape                                      # doctest: +SKIP
torch.Size([128, 128])

=========  ==============  ====================================================
field      shape           meaning
=========  ==============  ====================================================
tokens     [n, pos]        token ids, right-padded
labels     [n] bool        the class a probe should detect (True = positive)
positions  [n] long        the position whose activation the probe reads
groups     n strings       optional: which phrasing/scenario each row comes from
task       dict            optional: the task spec the prompts were generated from
position   str             how positions were chosen (recorded in saved probes)
=========  ==============  ====================================================

Positions: ``"answer"`` (a pair's ``answer_pos``), ``"last"`` (each row's last real token) or an
explicit index (negative counts from the end of the row). Activations at hooks with head axes
(``hook_z``: ``[pos, head, d_head]``) are flattened to one vector per prompt.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.errors import DataError, HookNameError, ShapeError

Position = str | int
SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Labelled:
    """Prompts with binary labels and the position to probe (see the module docstring)."""

    tokens: Int[Tensor, "n pos"]
    labels: Bool[Tensor, " n"]
    positions: Int[Tensor, " n"]
    groups: tuple[str, ...] | None = None
    task: dict[str, Any] = field(default_factory=dict)
    position: str = "answer"  # how ``positions`` was chosen: answer, last or an index

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.ndim != 2:
            raise ShapeError(f"tokens has shape {tuple(self.tokens.shape)}: pass [n, pos] token ids")
        if self.labels.shape != (n,) or self.positions.shape != (n,):
            raise ShapeError(f"labels {tuple(self.labels.shape)} and positions {tuple(self.positions.shape)} "
                             f"must both be ({n},): one per prompt")
        if self.groups is not None and len(self.groups) != n:
            raise ShapeError(f"{len(self.groups)} groups for {n} prompts: give one group per prompt")
        if n and (int(self.positions.min()) < 0 or int(self.positions.max()) >= self.tokens.shape[1]):
            raise ShapeError(f"positions out of range 0..{self.tokens.shape[1] - 1}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, keep: Bool[Tensor, " n"] | list[bool]) -> "Labelled":
        """The rows where ``keep`` is true."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        groups = None if self.groups is None else tuple(g for g, k in zip(self.groups, keep.tolist()) if k)
        return Labelled(self.tokens[keep], self.labels[keep], self.positions[keep], groups, dict(self.task),
                        self.position)

    def in_groups(self, names: set[str] | list[str] | tuple[str, ...]) -> Bool[Tensor, " n"]:
        """Which rows belong to one of the groups ``names``."""
        if self.groups is None:
            raise DataError("these prompts have no groups: pass groups= when building them")
        names = set(names)
        return torch.tensor([g in names for g in self.groups], dtype=torch.bool)

    @staticmethod
    def from_pairs(pairs: PromptPairs, position: Position = "answer", groups: list[str] | None = None) -> "Labelled":
        """Contrast pairs as labelled prompts: each clean prompt is a positive, its corrupted twin
        a negative (``2 n`` rows, clean first). ``groups``: one per pair, shared by both rows."""
        n = len(pairs)
        tokens = torch.cat([pairs.clean, pairs.corrupted])
        if position == "answer":
            pos = pairs.answer_pos
        else:
            pos = _explicit(position, torch.full((n,), pairs.clean.shape[1]))
        labels = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
        if groups is not None and len(groups) != n:
            raise ShapeError(f"{len(groups)} groups for {n} pairs: give one group per pair")
        return Labelled(tokens, labels, torch.cat([pos, pos]).long(), None if groups is None else tuple(groups) * 2,
                        dict(pairs.task), str(position))

    @staticmethod
    def from_texts(model: HookedTransformer, texts: list[str], labels: list[bool] | list[int],
                   position: Position = "last", groups: list[str] | None = None) -> "Labelled":
        """Tokenise ``texts`` with the model's tokenizer (BOS prepended, right-padded)."""
        if len(texts) != len(labels):
            raise ShapeError(f"{len(texts)} texts but {len(labels)} labels: give one label per text")
        if not texts:
            raise DataError("no texts given: a probe needs labelled prompts")
        bad = [x for x in labels if x not in (0, 1, True, False)]
        if bad:
            raise DataError(f"label {bad[0]!r} is not binary: use 0/1 or true/false")
        rows = [model.to_tokens(t, padding_side="right")[0] for t in texts]
        lengths = torch.tensor([len(r) for r in rows])
        pad = model.tokenizer.pad_token_id if model.tokenizer is not None and model.tokenizer.pad_token_id is not None else 0
        tokens = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r.cpu()
        if position in ("last", "answer"):
            pos = lengths - 1
        else:
            pos = _explicit(position, lengths)
        return Labelled(tokens, torch.tensor([bool(x) for x in labels]), pos.long(),
                        None if groups is None else tuple(groups), {}, str(position))


def _explicit(position: Position, lengths: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
    """An explicit index per row (negative: from the end of each row); ``"last"``: the last token."""
    if position == "last":
        return lengths - 1
    if isinstance(position, str):
        try:
            position = int(position)
        except ValueError:
            raise DataError(f"position {position!r} not understood: use 'answer', 'last' or an integer index") from None
    pos = lengths + position if position < 0 else torch.full_like(lengths, position)
    if int(pos.min()) < 0 or bool((pos >= lengths).any()):
        raise DataError(f"position {position} is outside a prompt of {int(lengths.min())} tokens")
    return pos


def differing_token(pairs: PromptPairs) -> Int[Tensor, " n"]:
    """The clean token at the first position where each clean prompt differs from its twin
    (the cue of a one-token contrast pair); useful as a pair's group."""
    differ = pairs.clean != pairs.corrupted
    if not bool(differ.any(1).all()):
        raise DataError("some clean prompts equal their corrupted twin: no differing token")
    first = differ.int().argmax(1)
    return pairs.clean[torch.arange(len(pairs)), first]


def hook_names(model: HookedTransformer, layers: list[int] | None = None, site: str = "resid_post") -> list[str]:
    """``blocks.L.hook_<site>`` for each layer (default every layer); checks the range."""
    from mechkit.errors import did_you_mean

    if site not in SITES:
        raise HookNameError(f"unknown site {site!r}; {did_you_mean(site, SITES)}")
    n = model.cfg.n_layers
    layers = list(range(n)) if layers is None else list(layers)
    out_of_range = [layer for layer in layers if not 0 <= layer < n]
    if out_of_range:
        raise HookNameError(f"layer {out_of_range[0]} is out of range: this model has layers 0..{n - 1}")
    names = []
    for layer in layers:
        name = f"blocks.{layer}.hook_{site}"
        if name not in model.hook_dict:  # resid_mid does not exist in attention-only models, for one
            raise HookNameError(f"this model has no hook {name!r}: use another site")
        names.append(name)
    return names


def _layer_of(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def check_hooks(model: HookedTransformer, hooks: list[str]) -> list[str]:
    from mechkit.models.components import check_hook_name

    if not hooks:
        raise HookNameError("no hooks given: name at least one, e.g. blocks.0.hook_resid_post")
    return [check_hook_name(model, h) for h in hooks]


@torch.no_grad()
def collect(model: HookedTransformer, data: Labelled, hooks: list[str], *, max_memory: str | int | float | None = None,
            progress: bool = True) -> dict[str, Float[Tensor, "n d"]]:
    """Each hook's activation at each row's position, on the CPU in float32.

    Rows run in chunks that fit ``max_memory`` (bytes, ``"2GiB"`` or a share of available
    memory; default :func:`mechkit.memory.budget_bytes`); the forward stops after the last
    layer a hook needs.
    """
    from tqdm.auto import tqdm

    from mechkit.memory import MemoryBudgetError, budget_bytes, format_bytes
    from mechkit.sae.cache import sequence_bytes

    hooks = check_hooks(model, hooks)
    layers = [_layer_of(h) for h in hooks]
    stop = max(layers) + 1 if None not in layers and max(layers) + 1 < model.cfg.n_layers else None
    budget = budget_bytes(max_memory, str(model.cfg.device))
    row = sequence_bytes(model, hooks, data.tokens.shape[1], logits=stop is None)
    if row > budget:
        raise MemoryBudgetError(f"probing needs about {format_bytes(row)} for one prompt but the memory budget is "
                                f"{format_bytes(budget)}: raise max_memory (--max-memory), or use shorter prompts")
    chunk = max(1, budget // row)
    device = model.cfg.device
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    starts = range(0, len(data), chunk)
    for start in tqdm(starts, desc="activations", disable=not progress or len(starts) < 4, leave=False):
        tokens = data.tokens[start : start + chunk].to(device)
        rows = torch.arange(tokens.shape[0], device=device)
        pos = data.positions[start : start + chunk].to(device)
        wanted = set(hooks)
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted, stop_at_layer=stop)
        for h in hooks:
            out[h].append(cache[h][rows, pos].reshape(len(rows), -1).float().cpu())
        del cache
    return {h: torch.cat(v) if v else torch.zeros(0, 0) for h, v in out.items()}


@torch.no_grad()
def top_tokens(model: HookedTransformer, tokens: Int[Tensor, "n pos"], positions: Int[Tensor, " n"],
               batch_size: int = 64) -> Int[Tensor, " n"]:
    """The greedy next token at each row's position, on the CPU; only those positions are
    unembedded (the logits of a whole batch would be ``pos`` times larger)."""
    device = model.cfg.device
    ln_final = getattr(model, "ln_final", None)  # absent when the model has no final normalisation
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        resid = model(tokens[rows].to(device), stop_at_layer=model.cfg.n_layers)  # [b, pos, d_model]
        x = resid[torch.arange(resid.shape[0], device=resid.device), positions[rows].to(resid.device)][:, None]
        x = ln_final(x) if ln_final is not None else x
        out.append(model.unembed(x)[:, 0].argmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
