"""Activation cache: run a model over prompts and store chosen hooks' activations on disk.

>>> write_cache(model, tokens, "cache/", hooks=["blocks.1.hook_resid_post"])  # doctest: +SKIP
>>> acts = ActivationCache("cache/")                                            # doctest: +SKIP
>>> next(acts.batches("blocks.1.hook_resid_post", batch_size=4096, seed=0)).shape  # doctest: +SKIP
torch.Size([4096, 512])

Layout (one directory per hook, one manifest per rank)::

    <dir>/<hook>/rank{r:03d}-shard{i:05d}.safetensors   {"acts": [tokens, d]}
    <dir>/manifest-rank{r:03d}.json                      written atomically after each shard

Each rank (``RANK`` / ``WORLD_SIZE`` from the environment, as torchrun sets them) takes the
sequence batches ``b`` with ``b % world_size == rank`` and writes only its own files, so
processes never coordinate. A shard holds whole sequence batches; the manifest lists complete
shards and the first sequence not yet stored, so a rerun after an interruption skips finished
shards and overwrites a half-written one. Padding positions (past a prompt pair's
``answer_pos``) are not stored.
"""

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechkit._files import write_json
from mechkit._types import PromptPairs
from mechkit.distributed import env_world
from mechkit.errors import ArtifactError, DataError, HookNameError, did_you_mean
from mechkit.memory import MemoryBudgetError, budget_bytes, format_bytes
from mechkit.models import check_hook_name, fingerprint
from mechkit.sae.io import one_line, read_json_file, regular_file, safetensors_shapes

SCHEMA = "mechkit.sae.cache/1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_LAYER = re.compile(r"blocks\.(\d+)\.")
# a hook is a folder of the cache and a shard a file in it: plain names only, nothing that climbs out
_HOOK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.]{0,199}$")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\.safetensors$")
MAX_SHARD_TOKENS = 1 << 40
_HINT = "rerun write_cache (or `mechkit sae cache`) into a new directory"


def check_manifest(manifest: Any, where: Path) -> dict:
    """A manifest read from disk, refused (one line) unless it is a mechkit cache manifest whose
    hooks and shard files are plain names inside the cache and whose token counts are positive."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"cache manifest {where} is a JSON {type(manifest).__name__}, not an object: {_HINT}")
    if manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"cache manifest {where} has schema {str(manifest.get('schema'))[:40]!r}, expected {SCHEMA!r}")
    hooks = manifest.get("hooks")
    if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise ArtifactError(f"cache manifest {where} lists no hooks: {_HINT}")
    for h in hooks:
        if not _HOOK_NAME.match(h) or ".." in h:
            raise ArtifactError(f"cache manifest {where}: hook {h[:60]!r} is not a plain hook name (a cache may only "
                                f"reference files inside its own folder): {_HINT}")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ArtifactError(f"cache manifest {where} has no shard list: {_HINT}")
    for s in shards:
        file = s.get("file") if isinstance(s, dict) else None
        n = s.get("n_tokens") if isinstance(s, dict) else None
        if not isinstance(file, str) or not _SHARD_NAME.match(file) or ".." in file:
            raise ArtifactError(f"cache manifest {where}: shard {str(file)[:60]!r} is not a plain .safetensors file "
                                f"name (a cache may only reference files inside its own folder): {_HINT}")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARD_TOKENS:
            raise ArtifactError(f"cache manifest {where}: shard {file!r} has n_tokens {str(n)[:40]}, not a positive "
                                f"whole number: {_HINT}")
    for key in ("next_batch", "n_sequences"):
        value = manifest.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ArtifactError(f"cache manifest {where}: {key} {str(value)[:40]} is not a whole number >= 0: {_HINT}")
    if not isinstance(manifest.get("model_fingerprint", ""), str):
        raise ArtifactError(f"cache manifest {where}: model_fingerprint is not a string: {_HINT}")
    return manifest



def _as_sequences(data: Int[Tensor, "batch pos"] | PromptPairs) -> tuple[Tensor, Tensor]:
    """Token rows [n, pos] and each row's number of real tokens [n]."""
    if isinstance(data, PromptPairs):
        tokens = torch.cat([data.clean, data.corrupted])
        lengths = torch.cat([data.answer_pos, data.answer_pos]) + 1
        return tokens, lengths
    if not isinstance(data, Tensor) or data.ndim != 2:
        raise DataError("tokens must be an int tensor [batch, pos] or PromptPairs: reshape a token stream first")
    return data, torch.full((data.shape[0],), data.shape[1])


def _data_hash(tokens: Tensor, lengths: Tensor) -> str:
    digest = hashlib.sha256(tokens.to(torch.int64).numpy().tobytes())
    digest.update(lengths.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def write_cache(
    model: HookedTransformer,
    data: Int[Tensor, "batch pos"] | PromptPairs,
    out_dir: str | os.PathLike,
    hooks: Sequence[str],
    batch_size: int = 32,
    shard_tokens: int = 65536,
    dtype: str = "float32",
    skip_first: bool = False,
    progress: bool = True,
    max_memory: str | int | float | None = None,
) -> Path:
    """Store ``hooks``' activations for every real token of ``data`` under ``out_dir``.

    Args:
        data: token rows [batch, pos], or ``PromptPairs`` (clean then corrupted prompts,
            padding after ``answer_pos`` dropped).
        batch_size: sequences per batch (the unit of resuming and of the rank split); a batch
            whose forward pass does not fit ``max_memory`` runs in smaller forwards.
        shard_tokens: flush to a new shard once this many tokens are buffered (bounds memory
            at about ``shard_tokens * d_model * len(hooks)`` values).
        skip_first: drop position 0 (a BOS token's outsized residual norm can dominate an SAE).
        max_memory: working memory of one forward pass (bytes, ``"2GiB"``, or a share of the
            available memory such as 0.5; default :func:`mechkit.memory.budget_bytes`): sets how
            many sequences run at once (:func:`sequence_bytes`); the stored values do not depend on it.

    Returns the cache directory. Rerunning with the same arguments resumes after the last
    complete shard; different model, data or settings in a non-empty cache raise ``ArtifactError``.
    """
    if dtype not in _DTYPES:
        raise DataError(f"dtype {dtype!r} not supported; {did_you_mean(dtype, _DTYPES)}")
    if not hooks:
        raise HookNameError("no hooks given: name at least one, e.g. blocks.0.hook_resid_post")
    hooks = [check_hook_name(model, h) for h in hooks]
    rank, world = env_world()
    tokens, lengths = _as_sequences(data)
    layers = [int(m.group(1)) for h in hooks if (m := _LAYER.match(h))]
    stop = max(layers) + 1 if len(layers) == len(hooks) and max(layers) + 1 < model.cfg.n_layers else None
    budget = budget_bytes(max_memory, str(model.cfg.device))
    row = sequence_bytes(model, hooks, tokens.shape[1], logits=stop is None)
    if row > budget:
        raise MemoryBudgetError(
            f"caching activations needs about {format_bytes(row)} for one sequence of {tokens.shape[1]} tokens but the "
            f"memory budget is {format_bytes(budget)}: raise max_memory (--max-memory), or use shorter sequences"
        )
    per_forward = max(1, min(batch_size, budget // row))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "schema": SCHEMA,
        "hooks": list(hooks),
        "model_fingerprint": fingerprint(model),
        "data_hash": _data_hash(tokens, lengths),
        "n_sequences": int(tokens.shape[0]),
        "batch_size": batch_size,
        "shard_tokens": shard_tokens,
        "dtype": dtype,
        "skip_first": skip_first,
        "world_size": world,
        "rank": rank,
    }
    manifest_path = out / f"manifest-rank{rank:03d}.json"
    manifest = {**settings, "model_name": model.cfg.model_name, "shards": [], "next_batch": 0, "complete": False}
    if manifest_path.exists() or manifest_path.is_symlink():
        old = check_manifest(read_json_file(manifest_path, "cache manifest", _HINT), manifest_path)
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            raise ArtifactError(
                f"cache {out} was written with different {', '.join(changed)}: use a new directory or delete it"
            )
        manifest = old
    if manifest["complete"]:
        return out
    for h in hooks:
        (out / h).mkdir(exist_ok=True)

    n_batches = (tokens.shape[0] + batch_size - 1) // batch_size
    mine = [b for b in range(n_batches) if b % world == rank]
    todo = [b for b in mine if b >= manifest["next_batch"]]
    device = model.cfg.device
    buffers: dict[str, list[Tensor]] = {h: [] for h in hooks}
    n_buffered = 0

    def capture(act: Tensor, hook) -> None:
        captured[hook.name] = act.detach()

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"caching rank {rank}", disable=not progress)
    for i, b in enumerate(todo):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        batch, lens = tokens[rows].to(device), lengths[rows]
        keep = torch.arange(batch.shape[1])[None, :] < lens[:, None]  # [batch, pos]
        if skip_first:
            keep[:, 0] = False
        width = int(lens.max())
        for start in range(0, batch.shape[0], per_forward):  # the forwards that fit the budget
            captured: dict[str, Tensor] = {}
            with torch.no_grad(), model.hooks(fwd_hooks=[(h, capture) for h in hooks]):
                model(batch[start : start + per_forward, :width], stop_at_layer=stop)
            kept = keep[start : start + per_forward, :width].to(device)
            for h in hooks:
                buffers[h].append(captured[h][kept].to("cpu", _DTYPES[dtype]))
            del captured
        n_buffered += int(keep.sum())
        last = i == len(todo) - 1
        if n_buffered >= shard_tokens or (last and n_buffered):
            index = len(manifest["shards"])
            name = f"rank{rank:03d}-shard{index:05d}.safetensors"
            for h in hooks:
                save_file({"acts": torch.cat(buffers[h]).contiguous()}, str(out / h / name))
                buffers[h] = []
            manifest["shards"].append({"file": name, "n_tokens": n_buffered})
            manifest["next_batch"] = b + 1
            write_json(manifest_path, manifest)
            n_buffered = 0
        bar.update(1)
    bar.close()
    manifest["complete"] = True
    manifest["next_batch"] = n_batches
    write_json(manifest_path, manifest)
    return out


def sequence_bytes(model: HookedTransformer, hooks: Sequence[str], pos: int, logits: bool) -> int:
    """Memory one sequence of ``pos`` tokens takes in a caching forward (a generous estimate):
    the captured activations of ``hooks`` twice (on the device, then stored), one block's working
    activations, and the logits when the run goes to the end."""
    cfg = model.cfg
    heads, d_head, d_mlp = cfg.n_heads, cfg.d_head, cfg.d_mlp or 0
    per_token = 10 * cfg.d_model + 3 * d_mlp + 8 * heads * d_head + 3 * heads * pos + (2 * cfg.d_vocab if logits else 0)
    for h in hooks:
        kind = h.rsplit(".", 1)[-1]
        if kind in ("hook_pattern", "hook_attn_scores"):
            per_token += 2 * heads * pos
        elif kind == "hook_result":
            per_token += 2 * heads * cfg.d_model
        elif kind in ("hook_q", "hook_k", "hook_v", "hook_z"):
            per_token += 2 * heads * d_head
        elif ".mlp." in h and kind in ("hook_pre", "hook_post", "hook_pre_linear"):
            per_token += 2 * d_mlp
        else:
            per_token += 2 * cfg.d_model
    return per_token * pos * (torch.finfo(cfg.dtype).bits // 8)


@dataclass(frozen=True)
class Shard:
    path: Path
    n_tokens: int


class ActivationCache:
    """Read a cache written by ``write_cache`` (all ranks' complete shards).

    ``batches`` yields [batch_size, d] float32 tensors forever (epoch after epoch), shuffled
    with ``seed``: shard order per epoch, then tokens within a buffer of ``buffer_tokens``.
    The same seed gives the same stream; ``start`` skips that many batches (for resuming).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ArtifactError(f"no activation cache at {self.path}: write one with write_cache or `mechkit sae cache`")
        manifests = sorted(self.path.glob("manifest-rank*.json"))
        if not manifests:
            raise ArtifactError(f"no activation cache at {self.path}: write one with write_cache or `mechkit sae cache`")
        self.manifests = [check_manifest(read_json_file(m, "cache manifest", _HINT), m) for m in manifests]
        self.hooks: list[str] = self.manifests[0]["hooks"]
        self.model_fingerprint: str = self.manifests[0].get("model_fingerprint", "")
        for m, where in zip(self.manifests, manifests):
            if m["hooks"] != self.hooks or m.get("model_fingerprint", "") != self.model_fingerprint:
                raise ArtifactError(f"cache manifest {where} has other hooks or another model than {manifests[0].name}: "
                                    f"{_HINT}")
        self._d: dict[str, int] = {}
        for hook in self.hooks:  # every listed shard is there, complete, and as wide as the others
            d = None
            for shard in self.shards(hook):
                regular_file(shard.path, "cache shard", f"the cache is incomplete; {_HINT}")  # never a FIFO
                d = _check_shard(shard, d)[1]
            if d is not None:
                self._d[hook] = d

    def shards(self, hook: str) -> list[Shard]:
        if hook not in self.hooks:
            raise HookNameError(f"hook {hook!r} is not in cache {self.path}; {did_you_mean(hook, self.hooks)}")
        return [Shard(self.path / hook / s["file"], s["n_tokens"]) for m in self.manifests for s in m["shards"]]

    def n_tokens(self, hook: str) -> int:
        return sum(s.n_tokens for s in self.shards(hook))

    def d(self, hook: str) -> int:
        shards = self.shards(hook)
        if not shards:
            raise ArtifactError(f"cache {self.path} holds no shards for {hook!r}: rerun write_cache to finish it")
        return self._d[hook] if hook in self._d else _check_shard(shards[0])[1]

    def load(self, hook: str, max_tokens: int | None = None) -> Float[Tensor, "tokens d"]:
        """All (or the first ``max_tokens``) stored activations of ``hook``, in storage order."""
        parts, n, d = [], 0, self.d(hook)
        for shard in self.shards(hook):
            if max_tokens is not None and n >= max_tokens:
                break
            parts.append(_read(shard, d))
            n += shard.n_tokens
        acts = torch.cat(parts).float()
        return acts if max_tokens is None else acts[:max_tokens]

    def batches(
        self, hook: str, batch_size: int, seed: int = 0, buffer_tokens: int = 262144, start: int = 0
    ) -> Iterator[Float[Tensor, "batch d"]]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch size {batch_size!r} is not a positive whole number")
        shards = self.shards(hook)
        if not shards:
            raise ArtifactError(f"cache {self.path} holds no shards for {hook!r}: rerun write_cache to finish it")
        total, d = sum(s.n_tokens for s in shards), self.d(hook)
        if total < batch_size:
            raise DataError(f"cache holds {total} tokens of {hook!r}, fewer than one batch of {batch_size}")
        skip, epoch = start, 0
        while True:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(shards), generator=gen).tolist()
            carry: Tensor | None = None
            i = 0
            while i < len(order):
                parts, n = ([carry] if carry is not None else []), (0 if carry is None else len(carry))
                while i < len(order) and n < buffer_tokens:
                    shard = shards[order[i]]
                    parts.append(_read(shard, d))
                    n += shard.n_tokens
                    i += 1
                buf = torch.cat(parts)
                buf = buf[torch.randperm(len(buf), generator=gen)]
                n_full = len(buf) // batch_size
                for j in range(n_full):
                    if skip:
                        skip -= 1
                        continue
                    yield buf[j * batch_size : (j + 1) * batch_size].float()
                carry = buf[n_full * batch_size :]
            epoch += 1


def _check_shard(shard: Shard, d: int | None = None) -> tuple[int, int]:
    """(tokens, d) of a shard file, refused unless it holds ``acts`` [n_tokens, d] as its manifest says."""
    shapes = safetensors_shapes(shard.path, "cache shard", _HINT)
    dtype, shape = shapes.get("acts", ("", []))
    if (len(shape) != 2 or shape[0] != shard.n_tokens or shape[1] < 1 or (d is not None and shape[1] != d)
            or dtype not in ("F32", "F16", "BF16")):
        raise ArtifactError(f"cache shard {shard.path} holds no float acts [{shard.n_tokens}, d] as its manifest "
                            f"says (found {dtype or 'nothing'} {shape}): {_HINT}")
    return shape[0], shape[1]


def _read(shard: Shard, d: int | None = None) -> Tensor:
    _check_shard(shard, d)
    try:
        with safe_open(str(shard.path), "pt") as f:
            return f.get_tensor("acts")
    except Exception as err:  # a file changed or damaged after the check
        raise ArtifactError(f"cannot read cache shard {shard.path}: {one_line(err)}") from None
