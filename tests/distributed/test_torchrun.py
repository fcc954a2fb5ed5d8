"""Data parallelism across processes: 2 ranks on the gloo backend, 1 thread each, loopback only.

Runs the installed ``torchrun`` and ``mechkit`` as users do. Where each rank's own exit code and
stderr matter (bad input), the two ranks are started by hand with the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), which is what torchrun itself does.

Tolerances: each rank computes its share of the prompts in float32 and the sums are added in
float64, so N ranks differ from one process only in how prompts are grouped into batches
(float32 rounding of batched matmuls): scores agree to 1e-5 of the largest |score|, faithfulness
to 1e-6. DDP averages gradients over ranks in another order than one process sums them over the
batch: SAE weights agree to 1e-5 after 60 steps. A killed and restarted run is bitwise equal to
an uninterrupted run with the same number of ranks (same reduction order, state restored).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.console import MECHKIT, Run, mechkit

TORCHRUN = Path(sys.executable).with_name("torchrun")
HERE = Path(__file__).parent
ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
HOOK = "blocks.1.hook_resid_post"
SAE_ARGS = ["--expansion", "4", "--k", "8", "--batch-size", "1024"]
HANG_GUARD_S = 900  # only a guard against a hang: a loaded machine takes a fraction of this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, ranks: int = 2, restarts: int = 0, script: Path | None = None) -> Run:
    """``torchrun --nproc-per-node RANKS -m mechkit ARGS`` (or ``torchrun ... SCRIPT ARGS``)."""
    target = [str(script)] if script else ["-m", "mechkit"]
    cmd = [str(TORCHRUN), "--nproc-per-node", str(ranks), "--max-restarts", str(restarts),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *target, *map(os.fspath, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=HANG_GUARD_S)
    return Run(["torchrun", *cmd[1:]], proc.returncode, proc.stdout, proc.stderr)


def start_ranks(per_rank: list[list[str]], logs: Path, quiet: bool = False) -> list[subprocess.Popen]:
    """Start rank r running ``mechkit per_rank[r]``, with torchrun's environment; output in
    ``logs``. ``quiet``: no progress bars (stderr then holds only errors)."""
    port, world = free_port(), len(per_rank)
    procs = []
    for r, args in enumerate(per_rank):
        env = {**os.environ, **ENV, **({"TQDM_DISABLE": "1"} if quiet else {}), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        out, err = open(logs / f"rank{r}.out", "w"), open(logs / f"rank{r}.err", "w")
        procs.append(subprocess.Popen([str(MECHKIT), *map(os.fspath, args)], env=env, stdout=out, stderr=err))
    return procs


def finish(procs: list[subprocess.Popen], logs: Path) -> list[Run]:
    runs = []
    for r, p in enumerate(procs):
        code = p.wait(timeout=HANG_GUARD_S)
        runs.append(Run([f"rank {r}"], code, (logs / f"rank{r}.out").read_text(), (logs / f"rank{r}.err").read_text()))
    return runs


def wait_for(path: Path, procs) -> None:
    """Block until ``path`` exists (an event), failing if the processes end first."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not path.exists():
        alive = [p.poll() is None for p in procs] if isinstance(procs, list) else [procs.poll() is None]
        assert all(alive), f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def child_with_rank(parent: int, rank: int) -> int:
    """The pid of ``parent``'s child process whose environment says RANK=rank."""
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no child of {parent} has RANK={rank}")


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    assert a.shape == b.shape
    scale = float(a.abs().max()) or 1.0
    assert float((a - b).abs().max()) <= rel * scale, (float((a - b).abs().max()), scale)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "cache"
    run = mechkit("sae", "cache", "organism:chekhov", path, "--hook", HOOK, "--source", "task:chekhov", "--n", "256",
                  env=ENV)
    assert run.returncode == 0, run
    return path


def test_discover_on_two_ranks_equals_one_process_and_verifies(tmp_path):
    args = ["discover", "organism:chekhov", "--n-prompts", "24", "--ig-steps", "3", "--edges", "5%"]
    one = mechkit(*args, "--out", tmp_path / "one", env=ENV)
    assert one.returncode == 0, one
    two = torchrun(*args, "--out", tmp_path / "two")
    assert two.returncode == 0, two
    assert two.stdout.count("mechkit discover organism:chekhov") == 1, two  # rank 0 alone prints
    a, b = (json.loads((tmp_path / d / "circuit.json").read_text()) for d in ("one", "two"))
    assert a["faithfulness"][0]["value"] == pytest.approx(b["faithfulness"][0]["value"], abs=1e-6)
    from mechkit.artifacts import load_circuit

    ca, cb = load_circuit(tmp_path / "one" / "circuit.json"), load_circuit(tmp_path / "two" / "circuit.json")
    close(ca.edge_scores, cb.edge_scores, 1e-5)
    assert torch.equal(ca.in_circuit, cb.in_circuit)
    verified = mechkit("verify", tmp_path / "one" / "circuit.json", tmp_path / "two" / "circuit.json", env=ENV)
    assert verified.returncode == 0 and verified.stdout.count("PASS") == 2, verified


def test_python_api_scores_and_curve_on_two_ranks_equal_one_process(tmp_path):
    one = subprocess.run([sys.executable, str(HERE / "api_script.py"), str(tmp_path / "one.st")],
                         capture_output=True, text=True, env={**os.environ, **ENV}, timeout=HANG_GUARD_S)
    assert one.returncode == 0, one.stderr
    two = torchrun(tmp_path / "two.st", script=HERE / "api_script.py")
    assert two.returncode == 0, two
    a, b = load_file(tmp_path / "one.st"), load_file(tmp_path / "two.st")
    assert int(a["world"]) == 1 and int(b["world"]) == 2
    close(a["edge_scores"], b["edge_scores"], 1e-5)
    close(a["node_scores"], b["node_scores"], 1e-5)
    close(a["curve"], b["curve"], 1e-6)
    close(a["ci_low"], b["ci_low"], 1e-6)  # per-prompt values gathered in prompt order: the same bootstrap


def test_ranks_with_different_weights_are_refused_on_rank_0(tmp_path):
    run = torchrun(tmp_path / "x.st", "--perturb-rank", "1", script=HERE / "api_script.py")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: ranks disagree on the model fingerprint: rank 1 differs from rank 0; every rank must "
                      "load the same model and data (same spec, files and seed)"], run
    assert not (tmp_path / "x.st").exists()


def test_ranks_with_different_prompts_exit_2_with_one_line_on_rank_0(tmp_path):
    base = ["discover", "organism:chekhov", "--n", "8", "--ig-steps", "2", "--out", tmp_path / "out"]
    runs = finish(start_ranks([[*base, "--seed", "0"], [*base, "--seed", "1"]], tmp_path), tmp_path)
    line = runs[0].assert_one_line_error(2)
    assert "ranks disagree on the prompt pairs" in line
    assert runs[1].returncode == 2 and "error" not in runs[1].stderr, runs[1]
    assert not (tmp_path / "out" / "circuit.json").exists()


def test_more_ranks_than_prompt_pairs_is_refused(tmp_path):
    base = ["discover", "organism:chekhov", "--n", "1", "--out", tmp_path / "out"]
    runs = finish(start_ranks([base, base], tmp_path), tmp_path)
    line = runs[0].assert_one_line_error(2)
    assert "1 prompt pairs cannot be shared among 2 ranks" in line
    assert runs[1].returncode == 2 and not runs[1].stderr.strip(), runs[1]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nccl_without_a_gpu_is_refused_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: nccl is a valid choice here")
    run = mechkit("discover", "organism:chekhov", "--backend", "nccl", "--out", tmp_path / "out", env=ENV)
    assert "nccl backend needs CUDA GPUs" in run.assert_one_line_error(2)


def test_patch_on_two_ranks_equals_one_process(tmp_path):
    args = ["patch", "organism:chekhov", "--sweep", "head-out-by-pos", "--n-prompts", "12"]
    one = mechkit(*args, "--out", tmp_path / "one", env=ENV)
    assert one.returncode == 0, one
    two = torchrun(*args, "--out", tmp_path / "two")
    assert two.returncode == 0, two
    a, b = (load_file(tmp_path / d / "result.safetensors") for d in ("one", "two"))
    for key in a:
        close(a[key].double(), b[key].double(), 1e-5)


def test_cache_written_by_two_ranks_reads_as_one_cache(tmp_path, cache):
    two = torchrun("sae", "cache", "organism:chekhov", tmp_path / "c2", "--hook", HOOK, "--source", "task:chekhov",
                   "--n-prompts", "256")
    assert two.returncode == 0, two
    from mechkit.sae import ActivationCache

    one, both = ActivationCache(cache), ActivationCache(tmp_path / "c2")
    assert {s.path.name.split("-")[0] for s in both.shards(HOOK)} == {"rank000", "rank001"}
    a, b = one.load(HOOK), both.load(HOOK)
    assert a.shape == b.shape
    # the same activations, stored by rank: compare as sorted rows
    key = lambda t: t[torch.argsort(t[:, 0] * 1e3 + t[:, 1])]  # noqa: E731
    close(key(a), key(b), 1e-5)


def test_sae_training_on_two_ranks_equals_one_process(tmp_path, cache):
    args = [*SAE_ARGS, "--steps", "60"]
    one = mechkit("sae", "train", cache, HOOK, tmp_path / "one", *args, env=ENV)
    assert one.returncode == 0, one
    two = torchrun("sae", "train", cache, HOOK, tmp_path / "two", *args)
    assert two.returncode == 0, two
    assert two.stdout.count("trained topk SAE") == 1, two
    a, b = (load_file(tmp_path / d / "sae_weights.safetensors") for d in ("one", "two"))
    for key in a:
        close(a[key], b[key], 1e-5)


def test_killed_rank_restarts_from_the_checkpoint_and_finishes_as_uninterrupted(tmp_path, cache):
    args = ["sae", "train", cache, HOOK, "OUT", *SAE_ARGS, "--steps", "300", "--checkpoint-every", "20"]
    whole = torchrun(*[tmp_path / "whole" if a == "OUT" else a for a in args])
    assert whole.returncode == 0, whole

    out = tmp_path / "killed"
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--max-restarts", "1", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "mechkit", *[os.fspath(out if a == "OUT" else a) for a in args]]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=log, stderr=log)
        wait_for(out / "checkpoints" / "latest.json", proc)
        os.kill(child_with_rank(proc.pid, 1), signal.SIGKILL)
        code = proc.wait(timeout=HANG_GUARD_S)
    log = (tmp_path / "log").read_text()
    assert code == 0, log
    assert "SIGKILL" in log or "-9" in log, log  # the agent saw rank 1 die and restarted the group
    a, b = (load_file(d / "sae_weights.safetensors") for d in (tmp_path / "whole", out))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_rank_dying_without_restarts_stops_rank_0_with_one_line(tmp_path, cache):
    out = tmp_path / "out"
    args = ["sae", "train", cache, HOOK, out, *SAE_ARGS, "--steps", "100000", "--checkpoint-every", "20"]
    procs = start_ranks([args, args], tmp_path, quiet=True)
    wait_for(out / "checkpoints" / "latest.json", procs)
    procs[1].send_signal(signal.SIGKILL)
    runs = finish(procs, tmp_path)
    line = runs[0].assert_one_line_error(2)
    assert "another rank stopped" in line and "--max-restarts" in line
    assert not (out / "sae_weights.safetensors").exists()  # no partial SAE; the checkpoints stay for a rerun
    assert (out / "checkpoints" / "latest.json").exists()


def test_batch_that_does_not_divide_among_ranks_is_refused(tmp_path, cache):
    args = ["sae", "train", cache, HOOK, tmp_path / "out", "--batch-size", "1023", "--steps", "5"]
    runs = finish(start_ranks([args, args], tmp_path), tmp_path)
    assert "batch size 1023 does not divide among 2 ranks" in runs[0].assert_one_line_error(2)
    assert runs[1].returncode == 2 and not runs[1].stderr.strip(), runs[1]
    assert not (tmp_path / "out" / "sae_weights.safetensors").exists()
