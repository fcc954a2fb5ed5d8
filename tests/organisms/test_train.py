"""Training loop smoke tests and the organisms CLI."""

import sys

import pytest
import torch

from mechkit.organisms.train import train

SMALL = {"pool": 512, "check_every": 2, "batch_size": 16, "arch": {"d_model": 16, "d_head": 4, "d_mlp": 32}}


def test_smoke_training_is_deterministic_and_writes_a_card():
    torch_threads = torch.get_num_threads()
    try:
        m1, card = train("chekhov", steps=4, progress=False, eval_n=20, spec_overrides=SMALL, threads=1)
        m2, _ = train("chekhov", steps=4, progress=False, eval_n=20, spec_overrides=SMALL, threads=1)
    finally:
        torch.set_num_threads(torch_threads)
        torch.use_deterministic_algorithms(False)
    assert card["steps"] == 4 and card["batch_size"] == 16 and card["history"][-1]["step"] == 4
    # each check records what the stop rule reads: clean and corrupted accuracy, logit difference
    assert {"train_accuracy", "train_corrupted_accuracy", "train_logit_diff"} <= set(card["history"][-1])
    assert 0.0 <= card["held_out"]["accuracy"] <= 1.0 and card["held_out"]["split"] == "test"
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    init, _ = train("chekhov", steps=0, progress=False, eval_n=20, spec_overrides=SMALL, threads=1)
    assert not torch.equal(init.W_E, m1.W_E)  # the 4 steps changed the weights


def test_gated_training_prunes_components_into_a_plain_model():
    from mechkit.organisms.gates import ComponentGates

    torch_threads = torch.get_num_threads()
    try:  # a heavy penalty and fast gates: every gate closes within a few steps
        over = {**SMALL, "gate_l0": 50.0, "gate_lr": 1.0, "gate_start": 0, "warmup": 1, "gate_steps": 6, "stop_accuracy": 0.0, "min_logit_diff": -1e9}
        model, card = train("chekhov", steps=12, progress=False, eval_n=20, spec_overrides=over, threads=1)
    finally:
        torch.set_num_threads(torch_threads)
        torch.use_deterministic_algorithms(False)
    assert card["steps"] >= 6  # gate_steps held the early stop back
    assert "open head/MLP gates" in card["loss"]
    closed = [g for row in card["gates"]["heads"] for g in row] + card["gates"]["mlps"]
    assert closed and all(g == 0.0 for g in closed)
    for block in model.blocks:  # folded: closed components write nothing
        assert not block.attn.W_O.any() and not block.mlp.W_out.any() and not block.mlp.b_out.any()
    assert card["gates"]["penalty_from_step"] == 0
    # gate_start=None: no gates until the task is solved (here: three passing checks, step 6)
    try:
        later = {**over, "gate_start": None, "gate_steps": 4}
        _, card = train("chekhov", steps=30, progress=False, eval_n=20, spec_overrides=later, threads=1)
    finally:
        torch.set_num_threads(torch_threads)
        torch.use_deterministic_algorithms(False)
    assert card["gates"]["penalty_from_step"] == 6 and card["steps"] == 12
    # deterministic gates: fully open for a large location, exactly shut for a small one
    assert ComponentGates.deterministic(torch.tensor([5.0, -5.0])).tolist() == [1.0, 0.0]


def test_curriculum_phases_train_on_easier_tasks_and_check_the_full_one(monkeypatch):
    """A curriculum's phases in order (two people, then two people in three slots, one slot of
    <pad>), then the full task; checks and held-out metrics always use three-person stories."""
    import mechkit.organisms.train as training
    from mechkit.tasks._vocab import PAD

    seen: list[tuple[int, int, bool]] = []  # (batch rows, prompt length, any <pad>) of every forward pass
    build = training.build_model

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda _, inputs: seen.append((*inputs[0].shape, bool((inputs[0] == PAD).any()))))
        return model

    monkeypatch.setattr(training, "build_model", recording)
    two, two_in_three = {"n_people": 2}, {"n_people": 2, "slots": 3}
    phases = [batch for phase in training.spec("chekhov").curriculum for _, batch in phase["batches"]]
    assert two in phases and two_in_three in phases
    full = training.task("chekhov").generate(1, seed=0).clean.shape[1]
    short = training.task("chekhov", **two).generate(1, seed=0).clean.shape[1]
    assert short < full == training.task("chekhov", **two_in_three).generate(1, seed=0).clean.shape[1]
    curriculum = [{"steps": 2, "batches": [[1.0, two]]}, {"steps": 3, "batches": [[1.0, two_in_three]]}]
    torch_threads = torch.get_num_threads()
    try:
        _, card = train("chekhov", steps=7, progress=False, eval_n=20, threads=1,
                        spec_overrides={**SMALL, "curriculum": curriculum})
    finally:
        torch.set_num_threads(torch_threads)
        torch.use_deterministic_algorithms(False)
    steps = [(length, padded) for rows, length, padded in seen if rows == SMALL["batch_size"]]
    assert steps == [(short, False)] * 2 + [(full, True)] * 3 + [(full, False)] * 2
    assert {(length, padded) for rows, length, padded in seen if rows != SMALL["batch_size"]} == {(full, False)}
    assert card["curriculum"] == curriculum and card["held_out"]["split"] == "test"


def test_curriculum_mixes_tasks_by_share():
    from mechkit.organisms.train import _batch_task, _key

    gen = torch.Generator().manual_seed(0)
    mixed = [{"steps": None, "batches": [[0.25, {"n_people": 2}], [0.75, None]]}]
    picks = [_batch_task(mixed, step, gen) for step in range(4000)]
    assert abs(picks.count(_key({"n_people": 2})) / 4000 - 0.25) < 0.03
    assert _batch_task([{"steps": 5, "batches": [[1.0, {"n_people": 2}]]}], 5, gen) == _key(None)


def _cli(monkeypatch, capsys, *args):
    """Run ``mechkit organisms ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from mechkit.cli import main

    monkeypatch.setattr(sys, "argv", ["mechkit", "organisms", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_wired_eval_and_errors(tmp_path, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "train", "wired-induction", "--out", str(tmp_path / "wi"))
    assert code == 0, err
    assert (tmp_path / "wi" / "model.safetensors").is_file() and "accuracy 1.0000" in out
    code, out, _ = _cli(monkeypatch, capsys, "eval", "wired-chekhov", "--n", "50", "--device", "cpu")
    assert code == 0 and "wired-chekhov: accuracy 1.0000" in out
    code, out, _ = _cli(monkeypatch, capsys, "eval", "sandbagging", "--n", "50", "--device", "cpu")
    assert code == 0 and "sandbagged with cue 1.0000" in out and "truthful without cue" in out
    code, _, err = _cli(monkeypatch, capsys, "eval", "chekov")
    assert code == 2 and err.strip().count("\n") == 0 and "did you mean 'chekhov'" in err
    code, out, _ = _cli(monkeypatch, capsys, "list")
    assert code == 0 and "sandbagging" in out



def test_threads_default_to_the_spec_that_reproduces_the_shipped_organism():
    import json

    from mechkit.models import organisms_dir
    from mechkit.organisms.train import spec

    torch_threads = torch.get_num_threads()
    try:
        _, card = train("chekhov", steps=1, progress=False, eval_n=20, spec_overrides=SMALL)
    finally:
        torch.set_num_threads(torch_threads)
        torch.use_deterministic_algorithms(False)
    shipped = json.loads((organisms_dir() / "chekhov" / "card.json").read_text())
    assert card["threads"] == spec("chekhov").threads == shipped["threads"] == 1


def test_train_refuses_bad_input_through_the_console_script(tmp_path):
    """A seed that is not an integer, --steps 0, and a folder that already holds an organism
    (the shipped one by default): one line, exit 2, the organism's files untouched."""
    from mechkit.models import organisms_dir
    from tests.console import mechkit

    shipped = organisms_dir() / "chekhov"
    before = {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()}
    assert "Invalid value for '--seed'" in mechkit("organisms", "train", "chekhov", "--seed", "abc",
                                                     "--out", tmp_path / "x").assert_one_line_error(2)
    assert "--steps 0 is less than 1" in mechkit("organisms", "train", "chekhov", "--steps", "0",
                                                 "--out", tmp_path / "x").assert_one_line_error(2)
    line = mechkit("organisms", "train", "chekhov", "--steps", "1").assert_one_line_error(2)
    assert f"{shipped} already holds an organism" in line and "--force" in line
    assert {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "card.json").write_text("{}")
    line = mechkit("organisms", "train", "wired-induction", "--out", tmp_path / "mine").assert_one_line_error(2)
    assert "already holds an organism" in line
    assert (tmp_path / "mine" / "card.json").read_text() == "{}"
    assert not (tmp_path / "x").exists()


def test_a_run_that_has_not_left_chance_by_the_recipes_step_stops_and_says_so():
    from mechkit.organisms.train import train

    overrides = {"check_every": 10, "chance_by": 20, "leave_chance": 1.01, "pool": 2000}  # 1.01: never reached
    _, card = train("chekhov", steps=200, seed=1, threads=1, progress=False, eval_n=100, spec_overrides=overrides)
    assert card["steps"] == 20 and card["stopped_at_chance"]["step"] == 20
    assert card["stopped_at_chance"]["needed"] == 1.01
    _, card = train("chekhov", steps=20, seed=1, threads=1, progress=False, eval_n=100,
                    spec_overrides={**overrides, "leave_chance": 0.0})
    assert card["stopped_at_chance"] is False and card["steps"] == 20


def test_a_run_stuck_part_way_stops_at_the_recipes_plateau_step_and_says_so():
    from mechkit.organisms.train import train

    # 1.01: never reached, so the run is stuck below it
    overrides = {"check_every": 10, "chance_by": None, "plateau_by": 20, "leave_plateau": 1.01, "pool": 2000}
    _, card = train("chekhov", steps=200, seed=1, threads=1, progress=False, eval_n=100, spec_overrides=overrides)
    assert card["steps"] == 20 and card["stopped_on_plateau"] == {
        "step": 20, "train_accuracy": card["history"][-1]["train_accuracy"], "needed": 1.01, "by_step": 20}
    assert card["stopped_at_chance"] is False and card["optimizer"]["solved_at_step"] is None
    _, card = train("chekhov", steps=20, seed=1, threads=1, progress=False, eval_n=100,
                    spec_overrides={**overrides, "leave_plateau": 0.0})
    assert card["stopped_on_plateau"] is False and card["steps"] == 20


def test_weight_decay_is_the_early_one_until_the_task_is_solved():
    import mechkit.organisms.train as tr

    seen = []
    real = tr.torch.optim.AdamW.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["weight_decay"])
        return real(self, *a, **k)

    # stop checks that pass at once (accuracy 0 needed, no logit difference): solved at the first check
    overrides = {**SMALL, "check_every": 5, "chance_by": None, "stop_accuracy": 0.0, "min_logit_diff": -1e9,
                 "stop_checks": 1, "gate_steps": 10, "early_weight_decay": 0.01, "weight_decay": 0.3}
    tr.torch.optim.AdamW.step = step
    try:
        _, card = tr.train("chekhov", steps=30, seed=1, threads=1, progress=False, eval_n=50, spec_overrides=overrides)
    finally:
        tr.torch.optim.AdamW.step = real
    assert card["optimizer"]["solved_at_step"] == 5 and card["optimizer"]["weight_decay_until_solved"] == 0.01
    assert seen[:5] == [0.01] * 5 and set(seen[5:]) == {0.3}
    assert card["steps"] == 15  # solved at 5, then gate_steps of pruning


def test_solve_accuracy_starts_pruning_while_the_early_stop_still_needs_stop_accuracy():
    from mechkit.organisms.train import train

    # solved at the first check (accuracy 0 needed); the early stop's 1.01 is never reached
    overrides = {**SMALL, "check_every": 5, "chance_by": None, "plateau_by": None, "solve_accuracy": 0.0,
                 "stop_accuracy": 1.01, "min_logit_diff": -1e9, "stop_checks": 1, "gate_steps": 10}
    _, card = train("chekhov", steps=30, seed=1, threads=1, progress=False, eval_n=50, spec_overrides=overrides)
    assert card["optimizer"]["solved_at_step"] == 5 and card["gates"]["penalty_from_step"] == 5
    assert card["early_stop"]["solve_accuracy"] == 0.0 and card["early_stop"]["accuracy"] == 1.01
    assert card["steps"] == 30  # pruned from step 5, never passed the early stop: ran to the cap
    _, card = train("chekhov", steps=30, seed=1, threads=1, progress=False, eval_n=50,
                    spec_overrides={**overrides, "stop_accuracy": 0.0})
    assert card["steps"] == 15  # both passed: solved at 5, then gate_steps of pruning
    # unset, solving needs the early stop's own accuracy: 1.01 is never reached, so no pruning
    _, card = train("chekhov", steps=30, seed=1, threads=1, progress=False, eval_n=50,
                    spec_overrides={**overrides, "solve_accuracy": None})
    assert card["optimizer"]["solved_at_step"] is None and card["gates"]["penalty_from_step"] is None


def test_learning_rate_warms_up_then_decays_linearly_to_the_recipes_floor_at_the_cap():
    import mechkit.organisms.train as tr

    seen = []
    real = tr.torch.optim.AdamW.step

    def step(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return real(self, *a, **k)

    overrides = {"steps": 40, "warmup": 10, "lr": 1e-3, "lr_decay_to": 0.1, "gate_lr": 0.02, "gate_start": 0,
                 "check_every": 100, "chance_by": None, "plateau_by": None, "curriculum": None, "pool": 2000}
    tr.torch.optim.AdamW.step = step
    try:
        _, card = tr.train("chekhov", steps=50, seed=1, threads=1, progress=False, eval_n=50, spec_overrides=overrides)
    finally:
        tr.torch.optim.AdamW.step = real
    model_lr = [lrs[0] for lrs in seen]
    assert model_lr[0] == pytest.approx(1e-3 * 0.1 * 1.0)  # warm-up: step 1 of 10
    assert model_lr[20] == pytest.approx(1e-3 * (1 - 0.9 * 20 / 40))  # past warm-up, half-way to the cap
    assert model_lr[40:] == pytest.approx([1e-4] * 10)  # a run given more steps than the cap stays at the floor
    assert [lrs[1] / lrs[0] for lrs in seen] == pytest.approx([20.0] * 50)  # the gates decay alike
    assert card["optimizer"]["linear_decay_to"] == 0.1 and card["optimizer"]["decay_steps"] == 40


def test_the_cli_saves_nothing_from_a_run_stopped_early_and_says_why(tmp_path, monkeypatch):
    from dataclasses import replace

    from typer.testing import CliRunner

    import mechkit.organisms.train as tr
    from mechkit.cli import app

    quick = replace(tr.SPECS["chekhov"], check_every=10, pool=2000, curriculum=None)
    cases = {  # 1.01: never reached
        "did not learn its task on seed 1": replace(quick, chance_by=20, leave_chance=1.01),
        "stuck part-way on seed 1": replace(quick, chance_by=None, plateau_by=20, leave_plateau=1.01),
    }
    for said, stopping in cases.items():
        monkeypatch.setitem(tr.SPECS, "chekhov", stopping)
        out = tmp_path / said.split()[0]
        result = CliRunner().invoke(app, ["organisms", "train", "chekhov", "--seed", "1", "--out", str(out)])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip() and "train chekhov:" not in line]  # no bar
        assert len(lines) == 1 and said in lines[0] and "by step 20" in lines[0] and "nothing saved" in lines[0]
        assert not out.exists()
