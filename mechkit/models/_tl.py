"""Everything that depends on TransformerLens internals (loading, hook bookkeeping) lives here
and in ``_tl_block`` (its blocks run with fewer operations).

TransformerLens 3.9 is the pinned version; when mechkit moves to 4.x (TransformerBridge),
these two modules are the places to change.
"""

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading

# HookedTransformerConfig fields that describe the run, not the architecture.
_RUNTIME_FIELDS = {"device", "n_devices", "dtype", "n_params", "tokenizer_name"}


def official_names() -> list[str]:
    return list(tl_loading.OFFICIAL_MODEL_NAMES)


def official_name(name: str) -> str | None:
    """TransformerLens's official (Hugging Face) repo id for a name or alias, or None."""
    try:
        return tl_loading.get_official_model_name(name)
    except ValueError:
        return None


def _neutral_checkpoint_view(path: Path, label: str) -> tempfile.TemporaryDirectory:
    """A temp dir of symlinks to ``path`` under a neutral name, with config.json made
    complete for TransformerLens.

    TransformerLens guesses architectures from the *path string* ("llama" in a folder name
    selects its Llama branch), and reads ``n_ctx`` from GPT-2 configs, which transformers 5
    no longer writes. The view avoids both without touching the user's files.
    """
    tmp = tempfile.TemporaryDirectory(prefix="mechkit-ckpt-")
    view = Path(tmp.name) / label
    view.mkdir()
    for item in path.iterdir():
        if item.name != "config.json":
            (view / item.name).symlink_to(item.resolve())
    config = json.loads((path / "config.json").read_text())
    if "n_positions" in config and "n_ctx" not in config:
        config["n_ctx"] = config["n_positions"]
    (view / "config.json").write_text(json.dumps(config))
    return tmp


def hooked_from_hf_dir(
    path: Path,
    hf_model: torch.nn.Module,
    tokenizer,
    device: str,
    dtype: torch.dtype,
    label: str = "checkpoint",
) -> HookedTransformer:
    """Convert a loaded Hugging Face causal LM into an unprocessed HookedTransformer.

    No weight processing (no LayerNorm folding, no centering), so logits equal the
    Hugging Face model's.
    """
    with _neutral_checkpoint_view(path, label) as tmp:
        view = str(Path(tmp) / label)
        cfg = _config_in_view(path, view, label, device, dtype)
        state_dict = tl_loading.get_pretrained_state_dict(
            view, cfg, hf_model=hf_model, dtype=dtype, local_files_only=True
        )
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    if cfg.positional_embedding_type == "alibi" and hasattr(model, "pos_embed"):
        # TransformerLens builds a learned position table for ALiBi models too (BLOOM), never
        # loads or reads it, and leaves it uninitialised: zero it so fingerprints are stable
        with torch.no_grad():
            model.pos_embed.W_pos.zero_()
    return model.to(device, print_details=False)


def _config_in_view(path: Path, view: str, label: str, device: str, dtype: torch.dtype) -> HookedTransformerConfig:
    cfg = tl_loading.get_pretrained_model_config(view, fold_ln=False, device=device, dtype=dtype, local_files_only=True)
    cfg.model_name = path.name if label == "checkpoint" else label
    return cfg


def hf_dir_config(path: Path, device: str, dtype: torch.dtype, label: str = "checkpoint") -> HookedTransformerConfig:
    """The HookedTransformerConfig a checkpoint directory converts to, read from its config.json
    alone (no weights are loaded)."""
    with _neutral_checkpoint_view(path, label) as tmp:
        return _config_in_view(path, str(Path(tmp) / label), label, device, dtype)


def config_to_dict(cfg: HookedTransformerConfig) -> dict:
    """The architecture part of a config, JSON-serialisable, for saving organisms."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key in _RUNTIME_FIELDS:
            continue
        if value is None or isinstance(value, (bool, int, float, str, list, dict)):
            out[key] = value
    return out


def config_from_dict(data: dict, device: str, dtype: torch.dtype) -> HookedTransformerConfig:
    data = {k: v for k, v in data.items() if k not in _RUNTIME_FIELDS}
    return HookedTransformerConfig(**data, device=device, dtype=dtype)


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return os.fspath(constants.HF_HUB_CACHE)


@contextmanager
def fwd_hooks(model: HookedTransformer, hooks: list[tuple[str, Callable]]) -> Iterator[None]:
    """Forward hooks ``fn(act, hook) -> act | None`` on named hook points, removed on exit.

    Same semantics as ``model.hooks(fwd_hooks=...)``, but on exit it removes only these hooks:
    ``HookedRootModule.hooks`` walks every hook point of the model when it resets, which costs
    more than a small organism's whole forward pass in a sweep that runs hundreds of them.
    """
    handles = []
    try:
        for name, fn in hooks:
            point = model.hook_dict[name]
            handles.append(point.register_forward_hook(partial(_call_hook, fn, point)))
        yield
    finally:
        for h in handles:
            h.remove()


def _call_hook(fn: Callable, point, module, inputs, output):
    return fn(output, hook=point)


_PER_HEAD = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


def keep_heads(model: HookedTransformer, heads: list[list[int]]) -> HookedTransformer:
    """A copy of ``model`` whose layer ``l`` has only the heads ``heads[l]`` (the same number in
    every layer), in that order; every other weight is shared with ``model``. Not for grouped-query
    attention (its key/value heads are shared between query heads)."""
    cfg = copy.deepcopy(model.cfg)
    cfg.n_heads, cfg.init_weights = len(heads[0]), False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        small = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if len(parts) == 4 and parts[0] == "blocks" and parts[2] == "attn" and parts[3] in _PER_HEAD:
            value = value[heads[int(parts[1])]]
        state[key] = value
    small.load_state_dict(state, strict=False)
    return small.to(next(model.parameters()).device, print_details=False)
