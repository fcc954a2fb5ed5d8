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


# Run the training command with save_checkpoint wrapped: once the checkpoint after step 20 is
# written, the process says so in a marker file and waits there to be killed. The test waits on
# that event, not on a clock, so it behaves the same on a fast or a loaded machine.
_PAUSE_AT_CHECKPOINT = """
import sys, time
from pathlib import Path
import mechkit.sae.checkpoint as ckpt
marker, save = Path(sys.argv[1]), ckpt.save_checkpoint
def save_then_wait(trainer, root, step, config):
    path = save(trainer, root, step, config)
    if step >= 20:
        marker.write_text(str(step))
        while True:
            time.sleep(1)
    return path
ckpt.save_checkpoint = save_then_wait
sys.argv = ["mechkit", *sys.argv[2:]]
from mechkit.cli import main
main()
"""
HANG_GUARD = 1800  # seconds: only a hang comes near it


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, monkeypatch):
    from mechkit.sae import write_cache
    from tests.conftest import tiny_hooked

    cache = tmp_path / "cache"
    write_cache(tiny_hooked(), torch.randint(4, 64, (64, 16), generator=torch.Generator().manual_seed(0)), cache,
                [HOOK], batch_size=16, shard_tokens=256, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killed, marker, log = tmp_path / "killed", tmp_path / "checkpoint-written", tmp_path / "train.log"
    cmd = [sys.executable, "-c", _PAUSE_AT_CHECKPOINT, str(marker), "sae", "train", str(cache), HOOK, str(killed), *TRAIN]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        while not marker.exists():  # the event: the checkpoint after step 20 is on disk
            assert proc.poll() is None, f"training exited ({proc.returncode}) before checkpointing:\n{log.read_text()}"
            assert time.monotonic() - started < HANG_GUARD, f"training hangs:\n{log.read_text()}"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    latest = killed / "checkpoints" / "latest.json"
    step_at_kill = json.loads(latest.read_text())["step"]
    assert step_at_kill == int(marker.read_text()) and 20 <= step_at_kill < STEPS, log.read_text()
    assert not (killed / "sae_weights.safetensors").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process, so float sums run in the same order
    try:
        straight = tmp_path / "straight"
        for out in (killed, straight):  # resume the killed run; then one uninterrupted run
            _cli(monkeypatch, "sae", "train", str(cache), HOOK, str(out), *TRAIN)
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(str(killed / "sae_weights.safetensors")), load_file(str(straight / "sae_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (Path(killed) / "sparsity.safetensors").read_bytes() == (Path(straight) / "sparsity.safetensors").read_bytes()


def test_features_table_keeps_ids_and_highlighted_tokens(tiny_organism_dir, tmp_path):
    """At 80 columns the feature ids are printed whole, and the ``[[token]]`` highlight of the top
    context is text, not Rich markup."""
    from mechkit.sae.train import TrainConfig, build_training_sae
    from tests.console import mechkit

    sae = tmp_path / "sae"
    build_training_sae(TrainConfig(architecture="topk", k=4, expansion=2), 16, {"hook_name": HOOK}).save_inference_model(
        str(sae))
    run = mechkit("sae", "features", "organism:tiny", sae, "--n", "8", "--top", "3", "--device", "cpu",
                  env={"COLUMNS": "80"})
    assert run.returncode == 0, run
    ids = [w for line in run.stdout.splitlines() for w in line.split() if w.startswith("F:")]
    assert len(ids) == 3 and all(i.startswith(f"F:{HOOK}:") and i.rsplit(":", 1)[1].isdigit() for i in ids), run
    assert run.stdout.count("[[") >= 3 and run.stdout.count("]]") >= 3, run


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
