"""LoRA adapters on a real base model: saved small, merged into the weights before
TransformerLens sees them.

An adapter directory holds

- ``adapter_config.json`` — the ``peft`` LoRA config (rank, alpha, target modules);
- ``adapter_model.safetensors`` — the low-rank A/B matrices (never a pickle);
- ``card.json`` — ``base.spec`` (e.g. ``smollm2-135m``), ``base.fingerprint`` (of the base's
  Hugging Face weights) and ``fingerprint`` (of the merged HookedTransformer), plus how it was
  trained and measured.

:func:`load_adapter` loads the base as a Hugging Face model, checks its fingerprint against the
card (so an adapter never lands on other weights), applies the adapter with ``peft``, merges it
(``W + (alpha / r) B A``) and converts the merged model to TransformerLens; the result's
fingerprint must equal the card's. ``load_model("organism:NAME")`` does this for adapter
organisms under ``assets/organisms``.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch

from mechkit._files import write_json
from mechkit.errors import SpecError
from mechkit.models.fingerprint import fingerprint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CARD = "card.json"
# LoraConfig fields an adapter may set; anything else in adapter_config.json is refused
_LORA_FIELDS = {"r", "lora_alpha", "target_modules", "lora_dropout", "bias", "task_type", "peft_type",
                "base_model_name_or_path", "fan_in_fan_out", "init_lora_weights", "modules_to_save",
                "use_rslora", "use_dora", "inference_mode", "revision", "layers_to_transform", "layers_pattern",
                "rank_pattern", "alpha_pattern"}


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def read_card(path: Path) -> dict[str, Any]:
    from mechkit.models.loading import _read_config_json

    card = _read_config_json(path / CARD)
    base = card.get("base")
    if not (isinstance(base, dict) and isinstance(base.get("spec"), str) and isinstance(base.get("fingerprint"), str)):
        raise SpecError(f"{path / CARD} does not name its base model (base.spec, base.fingerprint): re-save the adapter")
    return card


def base_spec(path: Path) -> str:
    return read_card(path)["base"]["spec"]


def hf_base(spec: str, dtype: torch.dtype = torch.float32):
    """``(checkpoint dir, Hugging Face model, tokenizer, prepend_bos)`` of a base-model spec: a
    packaged model name, a ``.gguf`` file or a Hugging Face checkpoint directory."""
    from mechkit.models import gguf
    from mechkit.models.loading import load_hf_causal_lm

    packaged = gguf.packaged_name(spec)
    if packaged is not None or spec.lower().endswith(".gguf"):
        checkpoint = gguf.gguf_checkpoint(gguf.packaged_gguf(packaged) if packaged else Path(spec))
        prepend_bos = gguf.tokenizer_adds_bos(checkpoint)
    elif Path(spec).is_dir():
        checkpoint, prepend_bos = Path(spec), None
    else:
        raise SpecError(f"an adapter's base must be a packaged model (smollm2-135m), a .gguf file or a Hugging Face "
                        f"checkpoint directory, not {spec!r}")
    hf_model, tokenizer = load_hf_causal_lm(checkpoint, dtype)
    return checkpoint, hf_model, tokenizer, prepend_bos


def _lora_config(path: Path):
    from peft import LoraConfig

    from mechkit.models.loading import _read_config_json

    raw = _read_config_json(path / ADAPTER_CONFIG)
    unknown = sorted(set(raw) - _LORA_FIELDS)
    if raw.get("peft_type", "LORA") != "LORA" or unknown:
        what = f"fields {', '.join(unknown[:3])}" if unknown else f"peft_type {raw.get('peft_type')!r}"
        raise SpecError(f"{path / ADAPTER_CONFIG} is not a plain LoRA config ({what}): mechkit loads LoRA adapters only")
    fields = {k: v for k, v in raw.items() if k not in ("peft_type", "base_model_name_or_path", "revision")}
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{path / ADAPTER_CONFIG} is not a valid LoRA config ({err}): re-save the adapter") from None


def merge_adapter(hf_model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``hf_model`` with the adapter in ``path`` applied and merged into its weights."""
    from peft import get_peft_model, set_peft_model_state_dict

    from mechkit.models.loading import _read_safetensors

    config = _lora_config(path)
    weights = _read_safetensors(path / ADAPTER_WEIGHTS)
    peft_model = get_peft_model(hf_model, config)
    result = set_peft_model_state_dict(peft_model, weights)
    expected = {k for k in peft_model.state_dict() if "lora_" in k}
    missing = sorted(k for k in expected if k in set(result.missing_keys))
    if missing or result.unexpected_keys:
        names = missing or sorted(result.unexpected_keys)
        raise SpecError(f"{path / ADAPTER_WEIGHTS} does not fit its config ({len(names)} "
                        f"{'missing' if missing else 'unexpected'} tensors, e.g. {names[0]}): re-save the adapter")
    return peft_model.merge_and_unload()


def load_adapter(path: str | os.PathLike, base: str | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
    """The HookedTransformer of base model + adapter (merged).

    Args:
        path: an adapter directory (see the module docstring).
        base: the base-model spec; defaults to the card's. Its weights must have the card's
            fingerprint.

    Raises:
        SpecError: one line, e.g. naming both fingerprints when the base is not the adapter's.
    """
    from mechkit.models.loading import hooked_from_hf

    path = Path(path)
    card = read_card(path)
    want = card["base"]["fingerprint"]
    spec = base or card["base"]["spec"]
    checkpoint, hf_model, tokenizer, prepend_bos = hf_base(spec, dtype)
    if dtype == torch.float32:
        got = fingerprint(hf_model)
        if got != want:
            raise SpecError(f"the adapter in {path} was trained on {card['base']['spec']} ({want}), but {spec} has "
                            f"weights {got}: load it on its own base model")
    merged = merge_adapter(hf_model, path)
    model = hooked_from_hf(checkpoint, merged, tokenizer, device, dtype, label=path.name)
    if prepend_bos is not None:
        model.cfg.default_prepend_bos = prepend_bos
    if dtype == torch.float32 and card.get("fingerprint") and fingerprint(model) != card["fingerprint"]:
        raise SpecError(f"merging the adapter in {path} gave weights {fingerprint(model)}, not the card's "
                        f"{card['fingerprint']}: the peft or transformers version merges differently; retrain it "
                        "with `mechkit organisms train`")
    return model


def write_card(path: Path, card: dict[str, Any]) -> None:
    """Replace an adapter directory's card atomically."""
    write_json(path / CARD, card, indent=2)


def write_adapter(peft_model, folder: Path, card: dict[str, Any]) -> None:
    """Write an adapter's three files into an existing ``folder``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = peft_model.peft_config["default"].to_dict()
    config["base_model_name_or_path"] = card["base"]["spec"]
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items() if k in _LORA_FIELDS}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state, folder / ADAPTER_WEIGHTS)
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")


def save_adapter(peft_model, path: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write an adapter directory atomically (temp sibling, then rename), replacing any previous one."""
    from mechkit._files import staged_dir

    path = Path(path)
    with staged_dir(path) as tmp:
        write_adapter(peft_model, tmp, card)
    return path
