"""Feature circuits: attribute a task metric to SAE features, select them, check by intervention.

>>> attr = attribute_features(model, sae, pairs)                    # doctest: +SKIP
>>> feats = attr.top(3)                                             # most negative: clean -> corrupted drops the metric
>>> report = intervention_report(model, sae, pairs, feats)         # doctest: +SKIP
>>> circuit = feature_circuit(model, "organism:sandbagging", attr, feats)  # doctest: +SKIP

Attribution patching through the SAE with an error term: at the hook, the activation is
rewritten as ``x = decode(f) + err`` with ``err = x - decode(f)`` held fixed, so the model's
output is unchanged and the metric's gradient reaches the features ``f``. A feature's score
is ``grad_f(metric) . (f_corrupted - f_clean)``, summed over positions and averaged over prompt
pairs: a first-order estimate of how much the metric moves when that feature alone takes its
corrupted value. The metric is per-prompt (``mechkit.metrics.logit_diff`` by default).

Interventions keep the error term too: ``x + decode(f') - decode(f)``, where ``f'`` is ``f``
with the chosen features zeroed (ablation) or set to given per-position values (steering).
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import Circuit, PromptPairs
from mechkit.metrics import logit_diff
from mechkit.models import check_hook_name
from mechkit.sae.io import sae_hook

Metric = Callable[[Tensor, PromptPairs], Tensor]


@dataclass(frozen=True)
class FeatureAttribution:
    """Per-feature attribution scores at one hook.

    ==============  ================  ===================================================
    field           shape             meaning
    ==============  ================  ===================================================
    scores          [feature]         mean over pairs of sum over positions of grad x delta
    by_position     [pos, feature]    the same before summing over positions
    clean_mean      [pos, feature]    mean feature activation on the clean prompts
    corrupted_mean  [pos, feature]    ... on the corrupted prompts
    ==============  ================  ===================================================
    """

    hook: str
    metric: str
    scores: Float[Tensor, " feature"]
    by_position: Float[Tensor, "pos feature"]
    clean_mean: Float[Tensor, "pos feature"]
    corrupted_mean: Float[Tensor, "pos feature"]
    n_pairs: int

    def top(self, n: int, by: str = "negative", present: str | None = None,
            positions: Sequence[int] | None = None) -> list[int]:
        """The ``n`` features with the most negative scores (``by="negative"``: their corrupted
        value lowers the metric), the most positive, or the largest magnitude (``"abs"``).

        ``present="clean"`` keeps only features more active on clean than on corrupted prompts
        (what the clean prompt has and the corrupted one lacks, e.g. a cue detector);
        ``"corrupted"`` the reverse. ``positions`` scores (and compares) only those positions."""
        if by not in ("negative", "positive", "abs") or present not in (None, "clean", "corrupted"):
            from mechkit.errors import DataError

            raise DataError(f"by must be negative, positive or abs and present None, clean or corrupted; "
                            f"got by={by!r}, present={present!r}")
        rows = slice(None) if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
        scores = self.scores if positions is None else self.by_position[rows].sum(0)
        key = {"negative": -scores, "positive": scores, "abs": scores.abs()}[by].clone()
        if present is not None:
            more = (self.clean_mean[rows] - self.corrupted_mean[rows]).sum(0)
            key[(more <= 0) if present == "clean" else (more >= 0)] = -float("inf")
        order = key.argsort(descending=True)[:n]
        return order[key[order] > -float("inf")].tolist()

    def node_name(self, feature: int) -> str:
        return f"F:{self.hook}:{feature}"


def _masks(pairs: PromptPairs, device) -> Tensor:
    return torch.arange(pairs.clean.shape[1], device=device)[None] <= pairs.answer_pos.to(device)[:, None]


def attribute_features(
    model: HookedTransformer,
    sae: SAE,
    pairs: PromptPairs,
    hook: str | None = None,
    metric: Metric = logit_diff,
    batch_size: int = 64,
) -> FeatureAttribution:
    """Attribution patching of ``metric`` to ``sae``'s features (see the module docstring)."""
    hook = check_hook_name(model, sae_hook(sae, hook))
    device = model.cfg.device
    sae = sae.to(device)
    pos, d = pairs.clean.shape[1], sae.cfg.d_sae
    by_pos = torch.zeros(pos, d, device=device)
    clean_sum = torch.zeros(pos, d, device=device)
    corr_sum = torch.zeros(pos, d, device=device)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size].to(device)
        keep = _masks(batch, device)[..., None].float()  # [batch, pos, 1]
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.corrupted, names_filter=[hook])
            f_corr = sae.encode(cache[hook]).float()
        store: dict[str, Tensor] = {}

        def splice(act: Tensor, hook) -> Tensor:
            with torch.no_grad():
                f = sae.encode(act)
                err = act - sae.decode(f)
            f = f.detach().requires_grad_(True)
            store["f"] = f
            return sae.decode(f) + err

        with torch.enable_grad(), model.hooks(fwd_hooks=[(hook, splice)]):
            logits = model(batch.clean)
            metric(logits, batch).sum().backward()
        f_clean, grad = store["f"].detach().float(), store["f"].grad.float()
        by_pos += (grad * (f_corr - f_clean) * keep).sum(0)
        clean_sum += (f_clean * keep).sum(0)
        corr_sum += (f_corr * keep).sum(0)
    counts = _masks(pairs, device).sum(0).clamp(min=1)[:, None].float()
    n = len(pairs)
    by_pos = by_pos / n
    return FeatureAttribution(
        hook=hook,
        metric=getattr(metric, "__name__", "metric"),
        scores=by_pos.sum(0).cpu(),
        by_position=by_pos.cpu(),
        clean_mean=(clean_sum / counts).cpu(),
        corrupted_mean=(corr_sum / counts).cpu(),
        n_pairs=n,
    )


@contextmanager
def feature_intervention(
    model: HookedTransformer,
    sae: SAE,
    features: Sequence[int],
    values: Float[Tensor, "pos n_features"] | Float[Tensor, "batch pos n_features"] | None = None,
    hook: str | None = None,
    positions: Bool[Tensor, "batch pos"] | None = None,
) -> Iterator[HookedTransformer]:
    """Inside the block, ``features`` are zeroed (``values=None``) or set to ``values`` (per
    position, or per prompt and position), at every position or only where ``positions`` is
    True; what the SAE does not explain (the error term) is left as it was."""
    hook = check_hook_name(model, sae_hook(sae, hook))
    idx = torch.as_tensor(list(features), dtype=torch.long, device=model.cfg.device)

    def edit(act: Tensor, hook) -> Tensor:
        f = sae.encode(act)
        f_new = f.clone()
        if values is None:
            f_new[..., idx] = 0
        else:
            f_new[..., idx] = values[..., : act.shape[1], :].to(f.device, f.dtype)
        delta = (sae.decode(f_new) - sae.decode(f)).to(act.dtype)
        if positions is not None:
            delta = delta * positions[:, : act.shape[1], None].to(delta.device, delta.dtype)
        return act + delta

    with model.hooks(fwd_hooks=[(hook, edit)]):
        yield model


@dataclass(frozen=True)
class InterventionReport:
    """Fractions of prompts whose top next-token prediction is the named answer.

    Clean prompts should give ``answer`` and corrupted ones ``wrong``. ``ablated_*`` zero the
    features; ``patched_corrupted_*`` set them, on each corrupted prompt, to ``steer_scale`` times
    their values on the paired clean prompt (adding what the clean prompt has and the corrupted
    one lacks; a scale above 1 amplifies it, as in steering). ``where`` is ``"all"`` (every
    position), ``"diff"`` (only the positions where a pair's two prompts differ) or ``"answer"``
    (only each prompt's answer position).
    """

    features: tuple[int, ...]
    clean_gives_answer: float
    corrupted_gives_wrong: float
    ablated_clean_gives_answer: float
    ablated_clean_gives_wrong: float  # removing the features flips clean prompts to the corrupted answer
    ablated_corrupted_gives_wrong: float  # ... while corrupted prompts keep theirs
    patched_corrupted_gives_answer: float  # adding them flips corrupted prompts to the clean answer
    steer_scale: float = 1.0
    where: str = "all"


WHERE = ("all", "diff", "answer")


def where_mask(pairs: PromptPairs, where: str) -> Bool[Tensor, "batch pos"] | None:
    """The positions an intervention touches: None for every position, else a [batch, pos] mask."""
    if where == "diff":
        return pairs.clean != pairs.corrupted
    if where == "answer":
        pos = torch.arange(pairs.clean.shape[1], device=pairs.clean.device)
        return pos[None] == pairs.answer_pos.to(pos.device)[:, None]
    return None


@torch.no_grad()
def feature_strength(
    model: HookedTransformer, sae: SAE, pairs: PromptPairs, hook: str | None = None, where: str = "all",
    batch_size: int = 256,
) -> Float[Tensor, " feature"]:
    """Each feature's mean activation times its decoder norm over the tokens ``where`` selects
    (as in :func:`intervention_report`; ``"all"``: every position up to the answer), on both
    prompts of every pair: how much it writes into the residual stream there, with no labels
    used. ``strength.argsort(descending=True)`` ranks the features; one never active there is 0."""
    if where not in WHERE:
        from mechkit.errors import DataError

        raise DataError(f"where must be one of {', '.join(WHERE)}, got {where!r}")
    hook = check_hook_name(model, sae_hook(sae, hook))
    device = model.cfg.device
    sae = sae.to(device)
    total = torch.zeros(sae.cfg.d_sae, device=device)
    count = 0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size].to(device)
        at = where_mask(batch, where)
        at = _masks(batch, device) if at is None else at.to(device)
        for tokens in (batch.clean, batch.corrupted):
            _, cache = model.run_with_cache(tokens, names_filter=[hook])
            total += sae.encode(cache[hook])[at].float().sum(0)
            count += int(at.sum())
    return (total / max(count, 1) * sae.W_dec.detach().float().norm(dim=1)).cpu()


@torch.no_grad()
def intervention_report(
    model: HookedTransformer, sae: SAE, pairs: PromptPairs, features: Sequence[int], hook: str | None = None,
    batch_size: int = 256, steer_scale: float = 1.0, where: str = "all",
) -> InterventionReport:
    """Zero-ablate ``features`` on both prompt sets, and patch their clean values (times
    ``steer_scale``) into corrupted prompts; at every position (``where="all"``), only where
    the pair's prompts differ (``"diff"``) or only at the answer position (``"answer"``)."""
    if where not in WHERE:
        from mechkit.errors import DataError

        raise DataError(f"where must be one of {', '.join(WHERE)}, got {where!r}")
    hook = check_hook_name(model, sae_hook(sae, hook))
    device = model.cfg.device
    sae = sae.to(device)
    idx = list(features)
    sums = torch.zeros(6)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size].to(device)
        rows = torch.arange(len(batch), device=device)

        def top(tokens: Tensor) -> Tensor:
            return model(tokens)[rows, batch.answer_pos].argmax(-1)

        _, cache = model.run_with_cache(batch.clean, names_filter=[hook])
        clean_values = sae.encode(cache[hook])[..., idx] * steer_scale
        at = where_mask(batch, where)
        clean, corrupted = top(batch.clean), top(batch.corrupted)
        with feature_intervention(model, sae, idx, hook=hook, positions=at):
            abl_clean, abl_corr = top(batch.clean), top(batch.corrupted)
        with feature_intervention(model, sae, idx, values=clean_values, hook=hook, positions=at):
            patched = top(batch.corrupted)
        a, w = batch.answer, batch.wrong
        sums += torch.tensor([float((x == y).sum()) for x, y in (
            (clean, a), (corrupted, w), (abl_clean, a), (abl_clean, w), (abl_corr, w), (patched, a))])
    return InterventionReport(tuple(int(i) for i in idx), *(sums / len(pairs)).tolist(), steer_scale=float(steer_scale),
                              where=where)


def feature_circuit(
    model: HookedTransformer,
    model_spec: str,
    attribution: FeatureAttribution,
    features: Sequence[int],
    task: dict | None = None,
    hyperparameters: dict | None = None,
) -> Circuit:
    """A ``Circuit`` whose nodes are the selected features (``F:<hook>:<index>`` in node_scores)."""
    from mechkit import __version__
    from mechkit.models import fingerprint

    return Circuit(
        model_spec=model_spec,
        model_fingerprint=fingerprint(model),
        task=dict(task or {}),
        method="sae-attribution-patching",
        hyperparameters={"hook": attribution.hook, "metric": attribution.metric, "n_pairs": attribution.n_pairs,
                         **(hyperparameters or {})},
        edge_names=(),
        edge_scores=torch.zeros(0),
        in_circuit=torch.zeros(0, dtype=torch.bool),
        selection={"rule": "top-n", "n": len(features)},
        node_scores={attribution.node_name(f): float(attribution.scores[f]) for f in features},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mechkit_version=__version__,
    )


@dataclass(frozen=True)
class FeatureCircuitCheck:
    """The outcome of :func:`verify_feature_circuit`: each recorded held-out fraction and its
    re-measured value; ``reason`` is one line saying why it failed."""

    path: str
    passed: bool
    recorded: dict
    measured: dict
    tolerance: float
    reason: str = ""
    fingerprint_actual: str = ""  # the loaded model's weight fingerprint

    def lines(self) -> list[str]:
        out = [f"{'PASS' if self.passed else 'FAIL'} {self.path}"]
        for key, value in self.recorded.items():
            if key in self.measured:
                out.append(f"  {key}: recorded {value:.4f}, measured {self.measured[key]:.4f}")
        if self.reason:
            out.append(f"  {self.reason}")
        return out


_MEASURED = ("clean_gives_answer", "corrupted_gives_wrong", "ablated_clean_gives_answer", "ablated_clean_gives_wrong",
             "ablated_corrupted_gives_wrong", "patched_corrupted_gives_answer")


def verify_feature_circuit(path, tolerance: float = 0.02, device: str | None = None, load_model=None,
                           regenerate=None) -> FeatureCircuitCheck:
    """Re-measure a saved feature circuit (``method`` ``sae-attribution-patching``, as
    ``bench/sae_targets.py`` writes them): load its model (fingerprint must match) and its SAE
    (``hyperparameters["sae"]``, a path relative to the artifact's folder, else as given),
    regenerate the held-out prompts (``hyperparameters["held_out_task"]``) and rerun
    :func:`intervention_report` with the recorded features, ``where`` and ``steer_scale``;
    pass when every recorded fraction is within ``tolerance``. ``load_model`` and
    ``regenerate`` can be injected (same signatures as mechkit's)."""
    from pathlib import Path

    from mechkit.artifacts import load_circuit
    from mechkit.errors import ArtifactError
    from mechkit.models import fingerprint
    from mechkit.sae.io import load_sae

    if load_model is None:
        from mechkit.models import load_model
    path = Path(path)
    circuit = load_circuit(path)
    hp = circuit.hyperparameters
    recorded = hp.get("held_out")
    if circuit.method != "sae-attribution-patching" or not recorded or "sae" not in hp or "held_out_task" not in hp:
        raise ArtifactError(f"{path} is not a feature circuit with held-out interventions (sae, held_out, held_out_task)")
    sae_dir = path.parent / hp["sae"]
    sae_dir = sae_dir if sae_dir.is_dir() else Path(hp["sae"])
    model = load_model(circuit.model_spec, device=device)
    recorded = {k: float(recorded[k]) for k in _MEASURED if k in recorded}

    actual = fingerprint(model)

    def result(passed: bool, measured: dict, reason: str = "") -> FeatureCircuitCheck:
        return FeatureCircuitCheck(str(path), passed, recorded, measured, tolerance, reason, actual)

    if actual != circuit.model_fingerprint:
        return result(False, {}, "model weights differ from the ones the circuit was found in")
    sae = load_sae(sae_dir, device=model.cfg.device)
    hook = hp.get("hook") or sae_hook(sae)
    features = [int(n.rsplit(":", 1)[1]) for n in circuit.node_scores]
    wanted = [int(f) for f in recorded_features] if (recorded_features := hp["held_out"].get("features")) else features
    if sorted(wanted) != sorted(features):
        return result(False, {}, "the circuit's feature nodes differ from the recorded held-out features")
    if regenerate is None:  # tasks over a real model's tokenizer regenerate with the model
        from mechkit.artifacts.verify import _regenerate
        from mechkit.tasks import regenerate as by_name

        pairs = _regenerate(by_name, dict(hp["held_out_task"]), model)
    else:
        pairs = regenerate(dict(hp["held_out_task"]))
    rep = intervention_report(model, sae, pairs, wanted, hook=hook, steer_scale=float(hp.get("steer_scale", 1.0)),
                              where=hp.get("where", hp["held_out"].get("where", "all")))
    measured = {k: getattr(rep, k) for k in recorded}
    bad = [k for k in recorded if abs(measured[k] - recorded[k]) > tolerance]
    if bad:
        return result(False, measured, f"{bad[0]} moved by {measured[bad[0]] - recorded[bad[0]]:+.4f}, beyond ±{tolerance:g}")
    return result(True, measured)
