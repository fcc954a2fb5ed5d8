"""``mechkit sae``: cache -> train -> eval -> features end to end on a tiny organism; SIGKILL + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from mechkit.cli import main

HOOK = "blocks.1.hook_resid_post"


def _cli(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["mechkit", *args])
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (0, None), exit_.code


def test_cache_train_eval_features(tiny_organism_dir, tmp_path, monkeypatch, capsys):
    cache, out, html = tmp_path / "cache", tmp_path / "sae", tmp_path / "f.html"
    _cli(monkeypatch, "sae", "cache", "organism:tiny", str(cache), "--hook", HOOK, "--n", "64", "--device", "cpu")
    assert "1,024 tokens x 16" in capsys.readouterr().out
    _cli(monkeypatch, "sae", "train", str(cache), HOOK, str(out), "--arch", "topk", "--k", "4", "--expansion", "4",
         "--steps", "20", "--batch-size", "64", "--lr", "0.01", "--option", "aux_loss_coefficient=0.5")
    assert json.loads((out / "cfg.json").read_text())["metadata"]["training_architecture_details"][
        "aux_loss_coefficient"] == 0.5
    _cli(monkeypatch, "sae", "eval", "organism:tiny", str(out), "--n", "16", "--json", str(tmp_path / "e.json"),
         "--device", "cpu")
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["l0"] <= 4 and result["n_tokens"] == 256 and "CE loss recovered" in capsys.readouterr().out
    _cli(monkeypatch, "sae", "features", "organism:tiny", str(out), "--n", "16", "--top", "3", "--html", str(html),
         "--device", "cpu")
    page = html.read_text()
    assert f"F:{HOOK}:" in page and "plotly" in page and "<script src=" not in page  # offline: inlined


def test_unknown_source_is_one_line_error(tiny_organism_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mechkit", "sae", "cache", "organism:tiny", str(tmp_path), "--hook", HOOK,
                                      "--source", "file:x", "--device", "cpu"])
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown token source") and "\n" not in err


STEPS = 300
TRAIN = ["--arch", "topk", "--k", "4", "--expansion", "8", "--steps", str(STEPS), "--batch-size", "32", "--lr", "0.003",
         "--checkpoint-every", "10", "--seed", "3"]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, monkeypatch):
    from mechkit.sae import write_cache
    from tests.conftest import tiny_hooked

    cache = tmp_path / "cache"
    write_cache(tiny_hooked(), torch.randint(4, 64, (64, 16), generator=torch.Generator().manual_seed(0)), cache,
                [HOOK], batch_size=16, shard_tokens=256, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mechkit", "sae", "train", str(cache), HOOK, str(killed), *TRAIN]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 20:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    step_at_kill = json.loads(latest.read_text())["step"]
    assert 20 <= step_at_kill < STEPS and not (killed / "sae_weights.safetensors").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process, so float sums run in the same order
    try:
        straight = tmp_path / "straight"
        for out in (killed, straight):  # resume the killed run; then one uninterrupted run
            monkeypatch.setattr(sys, "argv", ["mechkit", "sae", "train", str(cache), HOOK, str(out), *TRAIN])
            main()
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(str(killed / "sae_weights.safetensors")), load_file(str(straight / "sae_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (Path(killed) / "sparsity.safetensors").read_bytes() == (Path(straight) / "sparsity.safetensors").read_bytes()


def test_train_init_option(tiny_organism_dir, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    _cli(monkeypatch, "sae", "cache", "organism:tiny", str(cache), "--hook", HOOK, "--n", "16", "--device", "cpu")
    short = ["--arch", "topk", "--k", "4", "--expansion", "4", "--steps", "1", "--batch-size", "64"]
    for init in ("data", "sae_lens"):
        _cli(monkeypatch, "sae", "train", str(cache), HOOK, str(tmp_path / init), *short, "--init", init)
    data, sae_lens = (load_file(str(tmp_path / i / "sae_weights.safetensors")) for i in ("data", "sae_lens"))
    assert not torch.allclose(data["W_dec"], sae_lens["W_dec"])
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["mechkit", "sae", "train", str(cache), HOOK, str(tmp_path / "x"), *short,
                                      "--init", "kmeans"])
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown init 'kmeans'" in err and "\n" not in err
    assert not (tmp_path / "x" / "sae_weights.safetensors").exists()
