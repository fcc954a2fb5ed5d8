"""Re-check a circuit artifact against its model: same weights, same prompts, same faithfulness.

>>> result = verify_circuit("circuits/induction.circuit.json")   # doctest: +SKIP
>>> result.passed, result.checks[0].measured                     # doctest: +SKIP
(True, 0.9731)

Steps: load the artifact; load the model from its spec (:func:`mechkit.load_model`) and compare
its fingerprint with the recorded one (a mismatch fails unless ``allow_fingerprint_mismatch``);
regenerate the prompts from the task spec (:func:`mechkit.tasks.regenerate`, given the model for
tasks built with its tokenizer, or
:func:`mechkit.patching.read_pairs` when the task names a ``source`` prompt file, which must lie
next to the artifact); re-evaluate
each recorded faithfulness with its ablation (:func:`mechkit.discovery.evaluate`) and pass when
every value is within ``tolerance`` (absolute) of the recorded one.

``load_model``, ``regenerate`` and ``evaluate`` can be injected (same signatures) to verify
against other data sources or evaluators.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechkit._types import Circuit, Faithfulness, PromptPairs
from mechkit.artifacts.io import load_circuit
from mechkit.artifacts.schema import model_spec
from mechkit.errors import ArtifactError, MechkitError

DEFAULT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Check:
    """One recorded faithfulness and its re-measured value."""

    ablation: str
    recorded: float
    measured: float
    tolerance: float
    quantity: str = "faithfulness"  # feature circuits: "held-out" (an intervention's fraction of prompts)

    @property
    def diff(self) -> float:
        return self.measured - self.recorded

    @property
    def ok(self) -> bool:
        return abs(self.diff) <= self.tolerance


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_circuit`; ``reason`` is one line saying why it failed."""

    path: str
    passed: bool
    tolerance: float
    fingerprint_recorded: str
    fingerprint_actual: str
    checks: tuple[Check, ...] = ()
    reason: str = ""

    @property
    def fingerprint_ok(self) -> bool:
        return bool(self.fingerprint_recorded) and self.fingerprint_recorded == self.fingerprint_actual

    def lines(self) -> list[str]:
        """A human-readable report (the CLI prints it)."""
        out = [f"{'PASS' if self.passed else 'FAIL'} {self.path}"]
        fp = "matches" if self.fingerprint_ok else f"MISMATCH (recorded {self.fingerprint_recorded or 'none'})"
        if self.fingerprint_actual:
            out.append(f"  fingerprint {self.fingerprint_actual}: {fp}")
        for c in self.checks:
            out.append(
                f"  {c.quantity} ({c.ablation}): recorded {c.recorded:.4f}, measured {c.measured:.4f}, "
                f"diff {c.diff:+.4f}, tolerance ±{c.tolerance:g}: {'ok' if c.ok else 'MISMATCH'}"
            )
        if self.reason:
            out.append(f"  {self.reason}")
        return out


def _defaults() -> tuple[Callable, Callable, Callable, Callable]:
    from mechkit.discovery.evaluate import evaluate
    from mechkit.models import fingerprint, load_model
    from mechkit.tasks import regenerate

    return load_model, regenerate, evaluate, fingerprint


def verify_circuit(
    path: str | os.PathLike,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_fingerprint_mismatch: bool = False,
    device: str | None = None,
    load_model: Callable[..., Any] | None = None,
    regenerate: Callable[[dict[str, Any]], PromptPairs] | None = None,
    evaluate: Callable[..., Faithfulness] | None = None,
    fingerprint: Callable[[Any], str] | None = None,
) -> VerifyResult:
    """Re-evaluate the artifact at ``path`` (see the module docstring). Never raises for a
    mismatch: the result says what failed. A corrupted or hostile artifact (one that is not a
    regular file, references files outside its directory or names an organism by path) raises
    ArtifactError."""
    circuit = load_circuit(path)
    if circuit.method == FEATURE_METHOD:
        return _verify_features(Path(path), circuit, tolerance, device, load_model, regenerate, fingerprint)
    if not circuit.faithfulness:
        return VerifyResult(str(path), False, tolerance, circuit.model_fingerprint, "",
                            reason="nothing to verify: the artifact records no faithfulness")
    own_regenerate = regenerate is not None
    if None in (load_model, regenerate, evaluate, fingerprint):
        d_load, d_regen, d_eval, d_fp = _defaults()
        load_model, regenerate = load_model or d_load, regenerate or d_regen
        evaluate, fingerprint = evaluate or d_eval, fingerprint or d_fp
    return _verify(Path(path), circuit, tolerance, allow_fingerprint_mismatch, device,
                   load_model, regenerate, evaluate, fingerprint, own_regenerate)


FEATURE_METHOD = "sae-attribution-patching"


def _verify_features(path: Path, circuit: Circuit, tolerance: float, device: str | None, load_model: Callable | None,
                     regenerate: Callable | None, fingerprint: Callable | None) -> VerifyResult:
    """A feature circuit (SAE features as nodes) records held-out intervention fractions, not a
    faithfulness: :func:`mechkit.sae.verify_feature_circuit` re-measures them."""
    from mechkit.sae import verify_feature_circuit

    d_load, d_regen, _, d_fp = _defaults()
    load_model, fingerprint = load_model or d_load, fingerprint or d_fp
    loaded: list[Any] = []

    def load(spec: str, device: str | None = None) -> Any:
        loaded.append(load_model(spec, device=device))
        return loaded[-1]

    def regen(task: dict[str, Any]) -> PromptPairs:
        return _regenerate(regenerate or d_regen, task, loaded[-1])

    _check_spec(path, circuit)
    try:
        check = verify_feature_circuit(path, tolerance, device, load_model=load, regenerate=regen)
    except MechkitError as err:
        if not loaded:
            return VerifyResult(str(path), False, tolerance, circuit.model_fingerprint, "",
                                reason=f"cannot load model {circuit.model_spec!r}: {err}")
        return VerifyResult(str(path), False, tolerance, circuit.model_fingerprint, fingerprint(loaded[-1]),
                            reason=f"cannot re-measure the feature circuit: {err}")
    checks = tuple(Check(key, value, check.measured[key], tolerance, "held-out")
                   for key, value in check.recorded.items() if key in check.measured)
    return VerifyResult(str(path), check.passed, tolerance, circuit.model_fingerprint, check.fingerprint_actual,
                        checks, check.reason)


def _check_spec(path: Path, circuit: Circuit) -> None:
    """Refuse a hostile model spec (``organism:../../x``) before anything is read."""
    try:
        model_spec(circuit.model_spec)
    except ValueError as err:
        raise ArtifactError(f"{path.name}: model.spec: {err}") from None


MAX_PROMPT_FILE_BYTES = 1 << 30


def _read_source(artifact: Path, task: dict[str, Any], model: Any) -> PromptPairs:
    """The user prompt file named by ``task["source"]``: a plain file name, read next to the
    artifact only (a shared artifact may not point anywhere else), checked against
    ``source_sha256`` when recorded."""
    import hashlib

    from mechkit.artifacts.io import _read_bounded, beside
    from mechkit.errors import DataError

    name = str(task["source"])
    try:
        source = beside(artifact, name, "task.source")
        if not os.path.lexists(source):
            raise DataError(f"prompt file {name!r} not found next to the artifact (in {artifact.parent}): "
                            "keep the prompt file beside the circuit artifact")
        data = _read_bounded(source, "prompt file", limit=MAX_PROMPT_FILE_BYTES)
    except ArtifactError as err:
        raise DataError(str(err)) from None
    recorded = task.get("source_sha256")
    if recorded and hashlib.sha256(data).hexdigest() != recorded:
        raise DataError(f"{source} changed since the circuit was measured (sha256 differs from source_sha256)")
    del data
    from mechkit.patching import read_pairs

    return read_pairs(source, model)


def _regenerate(regenerate: Callable, task: dict[str, Any], model: Any) -> PromptPairs:
    """Tasks built with a model's tokenizer (``ioi``, ...) regenerate with the model; others without."""
    from mechkit.tasks import needs_model

    return regenerate(task, model) if needs_model(str(task.get("name"))) else regenerate(task)


def _verify(path: Path, circuit: Circuit, tolerance: float, allow_mismatch: bool, device: str | None,
            load_model: Callable, regenerate: Callable, evaluate: Callable, fingerprint: Callable,
            own_regenerate: bool) -> VerifyResult:
    def fail(reason: str, actual: str = "", checks: tuple[Check, ...] = ()) -> VerifyResult:
        return VerifyResult(str(path), False, tolerance, circuit.model_fingerprint, actual, checks, reason)

    _check_spec(path, circuit)
    try:
        model = load_model(circuit.model_spec, device=device)
    except MechkitError as err:
        return fail(f"cannot load model {circuit.model_spec!r}: {err}")
    actual = fingerprint(model)
    if actual != circuit.model_fingerprint and not allow_mismatch:
        return fail("model weights differ from the ones the circuit was found in "
                    "(pass --allow-fingerprint-mismatch to evaluate anyway)", actual)
    if "source" in circuit.task and not own_regenerate:
        try:
            pairs = _read_source(path, circuit.task, model)
        except MechkitError as err:
            return fail(f"cannot re-read the task prompts: {err}", actual)
    elif not circuit.task.get("name") and not own_regenerate:
        return fail("the artifact records no task name: nothing to regenerate prompts from", actual)
    else:
        try:
            pairs = _regenerate(regenerate, dict(circuit.task), model)
        except MechkitError as err:
            return fail(f"cannot regenerate the task prompts: {err}", actual)
    device_ = getattr(getattr(model, "cfg", None), "device", None)
    if device_ is not None:
        pairs = pairs.to(device_)
    checks = []
    for recorded in circuit.faithfulness:
        try:
            measured = evaluate(model, pairs, circuit, ablation=recorded.ablation)
        except MechkitError as err:
            return fail(f"cannot evaluate the circuit ({recorded.ablation} ablation): {err}", actual, tuple(checks))
        checks.append(Check(recorded.ablation, recorded.value, float(measured.value), tolerance))
        if recorded.n_prompts is not None and recorded.n_prompts != len(pairs):
            return fail(f"regenerated {len(pairs)} prompts but the artifact records {recorded.n_prompts}", actual,
                        tuple(checks))
    bad = [c for c in checks if not c.ok]
    if bad:
        return fail(f"faithfulness ({bad[0].ablation}) moved by {bad[0].diff:+.4f}, beyond ±{tolerance:g}",
                    actual, tuple(checks))
    note = "" if actual == circuit.model_fingerprint else "fingerprint mismatch allowed by request"
    return VerifyResult(str(path), True, tolerance, circuit.model_fingerprint, actual, tuple(checks), note)
