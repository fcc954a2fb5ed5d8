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
"""

from mechkit.organisms import chekhov as _chekhov  # noqa: F401  (importing registers the tasks)
from mechkit.organisms import induction as _induction  # noqa: F401
from mechkit.organisms import sandbagging as _sandbagging  # noqa: F401
from mechkit.organisms.tasks import Task as Task, regenerate as regenerate, task as task

ORGANISMS = ("induction", "chekhov", "sandbagging", "wired-induction", "wired-chekhov")


def list_organisms() -> list[str]:
    """Names of every organism mechkit knows how to build (shipped or not)."""
    return list(ORGANISMS)
