"""Training loop smoke tests and the organisms CLI."""

import subprocess
import sys

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
    assert 0.0 <= card["held_out"]["accuracy"] <= 1.0 and card["held_out"]["split"] == "test"
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    init, _ = train("chekhov", steps=0, progress=False, eval_n=20, spec_overrides=SMALL, threads=1)
    assert not torch.equal(init.W_E, m1.W_E)  # the 4 steps changed the weights


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mechkit", "organisms", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_train_wired_and_errors(tmp_path):
    r = _cli("train", "wired-induction", "--out", str(tmp_path / "wi"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "wi" / "model.safetensors").is_file() and "accuracy 1.0000" in r.stdout
    bad = _cli("eval", "chekov")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "chekhov" in bad.stderr
