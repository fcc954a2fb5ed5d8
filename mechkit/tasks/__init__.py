"""Tasks: seeded generators of clean/corrupted prompt pairs, the step between a model and
patching or discovery (model -> task -> patching/discovery -> artifact -> view).

>>> from mechkit.tasks import task, regenerate
>>> pairs = task("chekhov").generate(8, seed=0, split="test")
>>> regenerate(pairs.task).clean.equal(pairs.clean)
True

Two kinds, one registry (:func:`task`, :func:`task_names`, :func:`regenerate`):

- organism tasks (:class:`Task`, a fixed word vocabulary): ``induction``, ``chekhov``,
  ``sandbagging`` and the wired organisms', defined in :mod:`mechkit.organisms`;
- real-model tasks (:class:`ModelTask`, the model's own tokenizer), which take the model:
  ``task("ioi").generate(n, seed, split, model=model)``:

  ==================  ==========================================================
  ``ioi``             indirect object identification, ABC corruption (:mod:`.ioi`)
  ``ioi-s2-flip``     the same, second subject mention flipped to the IO
  ``repeated-tokens`` induction on repeated random tokens (:mod:`.repeated_tokens`)
  ``capitals``        country -> capital, pairs the model gets right (:mod:`.capitals`)
  ==================  ==========================================================

``regenerate(pairs.task, model)`` rebuilds the same pairs (the model is needed by real-model
tasks only; ``needs_model(name)`` says which).
"""

from mechkit.tasks.model_task import ModelTask as ModelTask
from mechkit.tasks.registry import (
    needs_model as needs_model,
    regenerate as regenerate,
    register as register,
    task as task,
    task_names as task_names,
)
from mechkit.tasks.vocab_task import Task as Task
