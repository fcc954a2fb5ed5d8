"""A probe per layer (or per hook), fitted on one set of prompts and scored on held-out ones.

>>> from mechkit.probes import Labelled, sweep_layers
>>> t = mechkit.tasks.task("sandbagging")                                        # doctest: +SKIP
>>> train = Labelled.from_pairs(t.generate(200, seed=0, split="train"))          # doctest: +SKIP
>>> test = Labelled.from_pairs(t.generate(100, seed=1, split="test"))            # doctest: +SKIP
>>> result = sweep_layers(model, train, test)                                    # doctest: +SKIP
>>> result.best.hook, result.best.test.auroc                                     # doctest: +SKIP
('blocks.0.hook_resid_post', 1.0)

:func:`distribution_shift` fits on prompts from some groups (cue phrasings, scenarios) and
reports the AUROC on held-out prompts of those groups beside the AUROC on the other groups.
"""

from dataclasses import dataclass

from transformer_lens import HookedTransformer

from mechkit.errors import DataError
from mechkit.probes.activations import Labelled, collect, hook_names
from mechkit.probes.evaluate import Auroc, auroc_ci, evaluate_probe
from mechkit.probes.fit import LinearProbe, fit_probe


@dataclass(frozen=True)
class LayerResult:
    """One hook's probe, its AUROC on the training prompts and on the held-out ones."""

    hook: str
    probe: LinearProbe
    train: Auroc
    test: Auroc


@dataclass(frozen=True)
class LayerSweep:
    """Results in hook order; ``best`` has the highest held-out AUROC (the earliest on ties)."""

    results: tuple[LayerResult, ...]

    @property
    def best(self) -> LayerResult:
        return max(self.results, key=lambda r: (r.test.auroc, -self.results.index(r)))

    def __getitem__(self, hook: str) -> LayerResult:
        for r in self.results:
            if r.hook == hook:
                return r
        raise KeyError(hook)

    def lines(self) -> list[str]:
        """A plain-text table (the CLI prints it)."""
        out = [f"{'hook':<32} {'train AUROC':>11}  held-out AUROC [95% CI]"]
        for r in self.results:
            mark = "  <- best" if r is self.best else ""
            out.append(f"{r.hook:<32} {r.train.auroc:>11.4f}  {r.test.auroc:.4f} [{r.test.ci_low:.4f}, "
                       f"{r.test.ci_high:.4f}]{mark}")
        return out


def sweep_layers(model: HookedTransformer, train: Labelled, test: Labelled, hooks: list[str] | None = None,
                 method: str = "logreg", n_boot: int = 1000, seed: int = 0, max_memory=None,
                 progress: bool = True) -> LayerSweep:
    """Fit a probe at each of ``hooks`` (default every layer's ``resid_post``) on ``train`` and
    score it on ``test``. Activations are collected once for all hooks."""
    hooks = hook_names(model) if hooks is None else list(hooks)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{len(train)} training and {len(test)} held-out prompts: both sets need prompts")
    a_train = collect(model, train, hooks, max_memory=max_memory, progress=progress)
    a_test = collect(model, test, hooks, max_memory=max_memory, progress=progress)
    results = []
    for h in hooks:
        probe = fit_probe(a_train[h], train.labels, h, method=method, position=train.position, seed=seed)
        results.append(LayerResult(h, probe, auroc_ci(probe.score(a_train[h]), train.labels, n_boot=0),
                                   evaluate_probe(probe, a_test[h], test.labels, n_boot=n_boot, seed=seed)))
    return LayerSweep(tuple(results))


@dataclass(frozen=True)
class ShiftResult:
    """AUROC on held-out prompts of the training groups, and on prompts of unseen groups."""

    hook: str
    train_groups: tuple[str, ...]
    test_groups: tuple[str, ...]
    in_distribution: Auroc
    shifted: Auroc
    probe: LinearProbe

    @property
    def drop(self) -> float:
        return self.in_distribution.auroc - self.shifted.auroc


def distribution_shift(model: HookedTransformer, train: Labelled, test: Labelled, hook: str,
                       train_groups: list[str] | tuple[str, ...], method: str = "logreg", n_boot: int = 1000,
                       seed: int = 0, max_memory=None) -> ShiftResult:
    """Fit on the rows of ``train`` in ``train_groups``; score on the rows of ``test`` in those
    groups (in distribution) and on the rows of ``test`` in any other group (shifted)."""
    if train.groups is None or test.groups is None:
        raise DataError("a distribution-shift test needs groups on both sets: pass groups= when building them")
    train_groups = tuple(sorted(set(train_groups)))
    fit_rows = train.select(train.in_groups(train_groups))
    seen = test.in_groups(train_groups)
    if len(fit_rows) == 0 or bool(seen.all()) or not bool(seen.any()):
        raise DataError(f"groups {list(train_groups)} leave no training rows, or no held-out rows of seen and "
                        "unseen groups: choose training groups that cover some, not all, of the held-out prompts")
    in_dist, shifted = test.select(seen), test.select(~seen)
    acts = collect(model, fit_rows, [hook], max_memory=max_memory, progress=False)[hook]
    probe = fit_probe(acts, fit_rows.labels, hook, method=method, position=train.position, seed=seed)
    score = lambda d: evaluate_probe(probe, collect(model, d, [hook], max_memory=max_memory, progress=False)[hook],  # noqa: E731
                                     d.labels, n_boot=n_boot, seed=seed)
    return ShiftResult(hook, train_groups, tuple(sorted(set(shifted.groups))), score(in_dist), score(shifted), probe)
