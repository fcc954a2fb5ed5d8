"""The organisms' task machinery now lives in :mod:`mechkit.tasks`; these names stay importable here."""

from mechkit.tasks.registry import (
    regenerate as regenerate,
    register as register,
    task as task,
    task_names as task_names,
)
from mechkit.tasks.vocab_task import SPLITS as SPLITS, Task as Task
