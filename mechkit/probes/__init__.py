"""Linear probes on any hook's activations: fit, evaluate, sweep layers, save, steer and ablate.

>>> import mechkit
>>> from mechkit import probes
>>> model = mechkit.load_model("organism:sandbagging")                                  # doctest: +SKIP
>>> t = mechkit.tasks.task("sandbagging")                                               # doctest: +SKIP
>>> train = probes.Labelled.from_pairs(t.generate(200, seed=0, split="train"))          # doctest: +SKIP
>>> test = probes.Labelled.from_pairs(t.generate(100, seed=1, split="test"))            # doctest: +SKIP
>>> sweep = probes.sweep_layers(model, train, test)                                     # doctest: +SKIP
>>> print(sweep.best.test)                                                              # doctest: +SKIP
AUROC 1.0000 [1.0000, 1.0000] (100 positive, 100 negative)
>>> probes.save_probe(sweep.best.probe, "cue.probe.json", model)                        # doctest: +SKIP
>>> with probes.steer(model, sweep.best.probe, alpha=8.0):                              # doctest: +SKIP
...     logits = model(test.tokens)

Modules, in the order data flows through them:

- ``activations``: :class:`Labelled` prompts (from contrast pairs or texts, positions
  ``answer``/``last``/an index, optional groups), :func:`collect` (batched in the memory budget),
  ``top_tokens`` (the greedy next token at each row's position);
- ``data``: labelled texts from JSONL (``read_labelled``) and their seeded held-out split, which
  ``probe fit --data`` records and ``verify`` re-reads;
- ``fit``: :class:`LinearProbe`, :func:`fit_probe` (``logreg`` or ``diff-means``);
- ``evaluate``: :func:`auroc_ci` (AUROC with a stratified bootstrap interval), :func:`evaluate_probe`;
- ``sweep``: :func:`sweep_layers` (a probe per hook, best layer) and :func:`distribution_shift`;
- ``contrast``: :func:`contrast_probe` (the generic yes/no contrast-pair direction) and
  :func:`behaviour_labels` (does the model show the behaviour on each prompt?);
- ``io``: :func:`save_probe`, :func:`load_probe`, :func:`verify_probe` (``mechkit.probe/1``);
- ``steer``: :func:`steer` and :func:`ablate` along a probe's direction;
- ``effect``: :func:`steering_effect`, what steering and ablation do to a task's two
  accuracies (with Wilson intervals);
- ``noise``: :func:`noise_injection`, the probe-free sandbagging check of Tice et al. (2024):
  accuracy under Gaussian noise on every weight, which rises for a sandbagging model
  (:class:`NoiseCurve`: per noise level the mean with a bootstrap interval, the best seed, the
  improvement ratio, ``to_dict`` and a plotly ``figure``).

``mechkit probe fit|eval|verify|steer`` runs them from the shell.
"""

from mechkit.probes.activations import Labelled as Labelled, collect as collect, hook_names as hook_names
from mechkit.probes.contrast import (
    GENERIC_PAIRS as GENERIC_PAIRS,
    behaviour_labels as behaviour_labels,
    contrast_probe as contrast_probe,
)
from mechkit.probes.effect import SteeringEffect as SteeringEffect, steering_effect as steering_effect
from mechkit.probes.evaluate import Auroc as Auroc, auroc_ci as auroc_ci, evaluate_probe as evaluate_probe
from mechkit.probes.fit import LinearProbe as LinearProbe, fit_probe as fit_probe
from mechkit.probes.io import (
    SavedProbe as SavedProbe,
    load_probe as load_probe,
    save_probe as save_probe,
    verify_probe as verify_probe,
)
from mechkit.probes.noise import NoiseCurve as NoiseCurve, noise_injection as noise_injection
from mechkit.probes.steer import ablate as ablate, steer as steer
from mechkit.probes.sweep import (
    LayerSweep as LayerSweep,
    ShiftResult as ShiftResult,
    distribution_shift as distribution_shift,
    sweep_layers as sweep_layers,
)
