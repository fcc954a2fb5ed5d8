"""One registry for organism and real-model tasks; the organisms' names still work."""

import torch

import mechkit.organisms as org
import mechkit.tasks as tasks


def test_organism_names_are_re_exports():
    assert org.task is tasks.task and org.regenerate is tasks.regenerate and org.Task is tasks.Task
    from mechkit.organisms.tasks import Task, register

    assert Task is tasks.Task and register is tasks.register


def test_every_task_is_registered_once():
    names = tasks.task_names()
    assert len(names) == len(set(names))
    assert {"induction", "chekhov", "sandbagging", "ioi", "ioi-s2-flip", "repeated-tokens", "capitals"} <= set(names)
    assert not tasks.needs_model("chekhov") and tasks.needs_model("ioi")


def test_organism_tasks_ignore_a_model_argument():
    t = tasks.task("chekhov")
    a, b = t.generate(8, seed=1), t.generate(8, seed=1, model=object())
    assert torch.equal(a.clean, b.clean)
    assert torch.equal(tasks.regenerate(a.task).clean, a.clean)


def test_cli_and_verify_generate_real_model_tasks_with_the_model(tokenizer):
    from mechkit.artifacts.verify import _regenerate
    from mechkit.cli.discover import load_pairs
    from mechkit.cli.patch import organism_pairs

    pairs = load_pairs(tokenizer, "ioi", None, 8, 0, "test")
    assert len(pairs) == 8 and pairs.task["name"] == "ioi"
    assert torch.equal(organism_pairs("smollm2-135m", 8, 0, "ioi", tokenizer).clean, pairs.clean)
    calls = []
    _regenerate(lambda *args: calls.append(args), pairs.task, tokenizer)
    _regenerate(lambda *args: calls.append(args), tasks.task("chekhov").generate(2).task, tokenizer)
    assert [len(c) for c in calls] == [2, 1]  # the model goes to real-model tasks only
