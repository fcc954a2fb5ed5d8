"""``PatchResult``: a patching sweep's tensor with labelled axes, and its on-disk form.

On disk a result is ``result.safetensors`` (the tensor, key ``values``) plus
``result.json`` (dims, labels, sweep, direction, metric, method, baselines). No pickle.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mechkit.errors import ArtifactError, ShapeError

SCHEMA = "mechkit.patch_result/1"


@dataclass(frozen=True)
class PatchResult:
    """A sweep's metric per cell.

    ==============  ==================================================================
    field           meaning
    ==============  ==================================================================
    values          float32 tensor, one axis per entry of ``dims``
    dims            axis names, e.g. ``("layer", "pos", "head")``
    labels          ``{dim: [label per index]}``; positions are ``"3:tok"``
    sweep           e.g. ``"head-out-by-pos"``
    direction       ``"denoising"`` (corrupted run, clean patches) or ``"noising"``
    metric          metric name
    method          ``"activation"``, ``"attribution"`` or ``"path"``
    clean_value     mean metric on the clean run
    corrupted_value mean metric on the corrupted run
    ==============  ==================================================================

    Activation and path patching store the patched metric; attribution patching stores
    its first-order estimate of the *change* from the unpatched run.

    >>> r = PatchResult(torch.zeros(2, 3), ("layer", "pos"), {"layer": ["0", "1"], "pos": ["0:a", "1:b", "2:c"]},
    ...                 "resid-pre", "denoising", "logit-diff")
    >>> r.shape
    (2, 3)
    """

    values: Tensor
    dims: tuple[str, ...]
    labels: dict[str, list[str]]
    sweep: str
    direction: str
    metric: str
    method: str = "activation"
    clean_value: float | None = None
    corrupted_value: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != len(self.dims):
            raise ShapeError(f"values have {self.values.ndim} axes but dims name {len(self.dims)}: {self.dims}")
        for d, n in zip(self.dims, self.values.shape):
            if d in self.labels and len(self.labels[d]) != n:
                raise ShapeError(f"axis {d!r} has {n} entries but {len(self.labels[d])} labels")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def label(self, index: tuple[int, ...]) -> dict[str, str]:
        """The labels of one cell, ``{dim: label}``."""
        return {d: self.labels.get(d, [str(j) for j in range(n)])[i] for d, n, i in zip(self.dims, self.shape, index)}

    def top(self, k: int = 10, by_abs: bool = True, relative_to: float | None = None) -> list[tuple[dict[str, str], float]]:
        """The ``k`` cells with the largest values (or largest ``|value - relative_to|``)."""
        v = self.values.float()
        key = v - (relative_to or 0.0)
        key = key.abs() if by_abs else key
        k = min(k, v.numel())
        idx = key.flatten().topk(k).indices
        cells = [tuple(int(i) for i in torch.unravel_index(j, self.shape)) for j in idx]
        return [(self.label(c), float(v[c])) for c in cells]

    def heatmap(self, **kwargs):
        """A plotly figure of this result (see :func:`mechkit.patching.heatmap`)."""
        from mechkit.patching.plot import heatmap

        return heatmap(self, **kwargs)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``result.safetensors`` and ``result.json`` into ``directory``."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"values": self.values.detach().float().cpu().contiguous()}, out / "result.safetensors")
        meta = {k: v for k, v in asdict(self).items() if k != "values"}
        meta["dims"] = list(self.dims)
        (out / "result.json").write_text(json.dumps({"schema": SCHEMA, **meta}, indent=2) + "\n")
        return out

    @staticmethod
    def load(directory: str | os.PathLike) -> "PatchResult":
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            meta = json.loads((d / "result.json").read_text())
            values = load_file(d / "result.safetensors")["values"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise ArtifactError(f"{d} is not a saved patch result ({type(err).__name__}): save one with PatchResult.save") from None
        if meta.pop("schema", None) != SCHEMA:
            raise ArtifactError(f"{d / 'result.json'} has an unknown schema: expected {SCHEMA}")
        known = {f for f in PatchResult.__dataclass_fields__} - {"values"}
        unknown = set(meta) - known
        if unknown:
            raise ArtifactError(f"{d / 'result.json'} has unknown keys {sorted(unknown)}: it was written by another version")
        meta["dims"] = tuple(meta["dims"])
        return PatchResult(values=values, **meta)
