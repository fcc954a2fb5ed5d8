"""Model organisms: tiny transformers whose behaviour is present by construction.

>>> import mechkit.organisms as org
>>> org.list_organisms()
['induction', 'chekhov', 'sandbagging', 'wired-induction', 'wired-chekhov']
>>> pairs = org.task("induction").generate(8, seed=0, split="test")
>>> pairs.clean.shape[0]
8

Trained organisms (``induction``, ``chekhov``, ``sandbagging``) and analytically wired ones
(``wired-induction``, ``wired-chekhov``, with a known ground-truth circuit in their card) ship
under ``assets/organisms/NAME`` and load with ``mechkit.load_model("organism:NAME")``.

- ``task(name).generate(n, seed, split)`` -> ``PromptPairs``; ``split="test"`` draws held-out
  combinations only. ``regenerate(pairs.task)`` rebuilds the same pairs.
- ``evaluate(model, task(name), n, seed)`` -> held-out accuracy and mean logit difference.
- ``mechkit.organisms.train.train(name)`` / ``mechkit.organisms.wired.build(name)`` rebuild an
  organism (``mechkit organisms train NAME``); ``mechkit.organisms.probe`` fits linear probes.

Real-model organisms (``smol-sandbagging``) are LoRA fine-tunes of the packaged SmolLM2-135M,
shipped as adapters and merged on load (:mod:`mechkit.organisms.finetune`).
"""

from mechkit.organisms import chekhov as _chekhov  # noqa: F401  (importing registers the tasks)
from mechkit.organisms import induction as _induction  # noqa: F401
from mechkit.organisms import sandbagging as _sandbagging  # noqa: F401
from mechkit.organisms import smol_tasks as _smol_tasks  # noqa: F401  (the fine-tuned organisms' pair tasks)
from mechkit.organisms import probe as probe  # noqa: F401  (linear probes: mechkit.organisms.probe)
from mechkit.organisms.tasks import Task as Task, regenerate as regenerate, task as task
from mechkit.organisms.train import evaluate as evaluate

ORGANISMS = ("induction", "chekhov", "sandbagging", "wired-induction", "wired-chekhov")
# LoRA fine-tunes of the packaged SmolLM2-135M (mechkit.organisms.finetune)
FINE_TUNED = ("smol-sandbagging", "smol-chekhov")


def list_organisms(fine_tuned: bool = False) -> list[str]:
    """Names of every toy organism mechkit knows how to build (shipped or not); with
    ``fine_tuned=True``, the real-model organisms too."""
    return list(ORGANISMS) + (list(FINE_TUNED) if fine_tuned else [])
