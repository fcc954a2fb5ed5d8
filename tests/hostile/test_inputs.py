"""Hostile inputs to the loaders and arguments of ``patch``, ``discover`` and ``sae``, run through
the installed console script in a subprocess: each is refused with exit code 2 and one line on
stderr, no traceback, nothing executed, and nothing in the workspace touched (no file created,
changed or removed, earlier outputs intact). The subprocess timeout only guards against hangs.
"""

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_hooked, word_tokenizer
from tests.console import mechkit

HOOK = "blocks.1.hook_resid_post"
HEADER = "clean,corrupted,answer,wrong_answer\n"
HANG_GUARD = 600  # seconds; only a hang comes near it


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A saved tiny organism (``organism:tiny``), a valid SAE directory and a valid cache."""
    from mechkit.models import save_organism
    from mechkit.sae import write_cache
    from mechkit.sae.train import TrainConfig, build_training_sae

    root = tmp_path_factory.mktemp("assets")
    model = tiny_hooked()
    model.set_tokenizer(word_tokenizer(root / "tok"))
    save_organism(model, root / "organisms" / "tiny", card={"name": "tiny", "note": "random weights for tests"})
    sae = build_training_sae(TrainConfig(architecture="topk", k=4, expansion=2), 16, {"hook_name": HOOK})
    sae.save_inference_model(str(root / "sae"))
    tokens = torch.randint(4, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    write_cache(tiny_hooked(), tokens, root / "cache", [HOOK], batch_size=16, shard_tokens=256, progress=False)
    return root


@pytest.fixture
def ws(tmp_path, assets):
    """A workspace with an earlier output in it; ``ws.run`` runs mechkit there and checks that a
    refused run left every file of the workspace as it was."""
    space = tmp_path / "ws"
    (space / "earlier").mkdir(parents=True)
    (space / "earlier" / "result.json").write_text('{"kept": true}')
    return Workspace(space, assets)


class Workspace:
    def __init__(self, path: Path, assets: Path):
        self.path, self.assets = path, assets
        self.env = {"MECHKIT_ORGANISMS_DIR": str(assets / "organisms"), "COLUMNS": "80"}

    def copy(self, name: str) -> Path:
        """A copy of an asset (the SAE or the cache) inside the workspace, to be damaged."""
        dst = self.path / name
        shutil.copytree(self.assets / name, dst)
        return dst

    def snapshot(self) -> dict[str, str]:
        out = {}
        for p in sorted(self.path.rglob("*")):
            rel = str(p.relative_to(self.path))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if p.is_dir() else "other"  # a FIFO is never opened here
        return out

    def refused(self, *args) -> str:
        """Run ``mechkit ARGS`` in the workspace: exit 2, one line, nothing touched; that line."""
        before = self.snapshot()
        run = mechkit(*args, env=self.env, cwd=self.path, timeout=HANG_GUARD)
        line = run.assert_one_line_error(2)
        assert len(line) < 1000, run
        assert self.snapshot() == before, f"the workspace changed\n{run}"
        return line

    def ok(self, *args):
        run = mechkit(*args, env=self.env, cwd=self.path, timeout=HANG_GUARD)
        assert run.returncode == 0, run
        assert "Traceback" not in run.stderr, run
        return run


def _patch(ws: Workspace, data: Path, *extra) -> str:
    return ws.refused("patch", "organism:tiny", "--data", data, "--sweep", "resid-pre", "--out", "out",
                      "--device", "cpu", *extra)


# ---------------------------------------------------------------------------------- prompt files

def test_prompt_file_not_utf8(ws):
    bad = ws.path / "latin1.csv"
    bad.write_bytes(HEADER.encode() + b"w1 \xe9t\xe9,w2,w3,w4\n")
    assert "not UTF-8" in _patch(ws, bad)


def test_prompt_file_huge_csv_field(ws):
    bad = ws.path / "huge.csv"
    bad.write_text(HEADER + "w1 " * 70_000 + ",w2,w3,w4\n")
    assert "131,072 characters" in _patch(ws, bad)


def test_prompt_file_deeply_nested_jsonl(ws):
    bad = ws.path / "deep.jsonl"
    bad.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert "nests too deeply" in _patch(ws, bad)


@pytest.mark.parametrize("idx", [100_000, 2**70, -1])
def test_prompt_file_token_id_outside_vocabulary(ws, idx):
    bad = ws.path / "ids.jsonl"
    bad.write_text(json.dumps({"clean": "w1 w2", "corrupted": "w3 w2", "correct_idx": idx, "incorrect_idx": 5}) + "\n")
    assert "outside the vocabulary" in _patch(ws, bad)


def test_prompt_file_unknown_answer_word(ws):
    bad = ws.path / "unk.csv"
    bad.write_text(HEADER + "w1 w2,w3 w2,Paris,w5\n")
    line = _patch(ws, bad)
    assert "'Paris' is not in the vocabulary" in line and "<unk>" in line


def test_prompt_file_fifty_thousand_bad_rows_is_a_short_line(ws):
    bad = ws.path / "many.csv"
    bad.write_text(HEADER + "w1 w2,w1,w3,w4\n" * 50_000)
    line = _patch(ws, bad)
    assert "50,000 of 50,000 rows" in line and "and 49,990 more" in line and "row 10:" in line and "row 11:" not in line


def test_prompt_file_short_row(ws):
    bad = ws.path / "short.csv"
    bad.write_text(HEADER + "w1 w2,w3 w2,w4\n")
    assert "row 1: it has 3 fields, the header has 4" in _patch(ws, bad)


def test_prompt_file_fifo_does_not_hang(ws):
    fifo = ws.path / "pairs.csv"
    os.mkfifo(fifo)
    assert "not a regular file" in _patch(ws, fifo)


def test_bom_csv_is_read(ws):
    data = ws.path / "bom.csv"
    data.write_bytes(b"\xef\xbb\xbf" + (HEADER + "w1 w2 w3,w1 w5 w3,w7,w8\n").encode())
    ws.ok("patch", "organism:tiny", "--data", data, "--sweep", "resid-pre", "--out", "out", "--device", "cpu")
    assert (ws.path / "out" / "result.json").is_file()


def test_negative_clean_baseline_warns(ws):
    """One of a pair of files with answer and wrong answer swapped has a negative clean logit difference."""
    warned = []
    for name, (a, b) in {"ab.csv": ("w7", "w8"), "ba.csv": ("w8", "w7")}.items():
        data = ws.path / name
        data.write_text(HEADER + f"w1 w2 w3,w1 w5 w3,{a},{b}\nw4 w5 w6,w4 w9 w6,{a},{b}\n")
        run = ws.ok("patch", "organism:tiny", "--data", data, "--sweep", "resid-pre", "--out", f"out-{name}",
                    "--device", "cpu")
        warned.append("warning: the clean logit difference" in run.stderr)
    assert sorted(warned) == [False, True]


# -------------------------------------------------------------------------- arguments and outputs

# a spec that does not exist: if the argument were checked only after loading the model, the
# error would name the spec instead
NO_MODEL = "organism:does-not-exist"


@pytest.mark.parametrize("args, says", [
    (["--sweep", "head-out-by-poss"], "unknown sweep"),
    (["--metric", "logit_dif"], "unknown metric"),
    (["--method", "exact"], "unknown method"),
    (["--direction", "sideways"], "unknown direction"),
])
def test_patch_arguments_are_checked_before_the_model_loads(ws, args, says):
    assert says in ws.refused("patch", NO_MODEL, "--out", "out", *args)


@pytest.mark.parametrize("args, says", [
    (["--edges", "5x"], "bad edge budget"),
    (["--edges", "150%"], "outside [0, 1]"),
    (["--method", "eap-igg"], "unknown method"),
    (["--rule", "best"], "unknown selection rule"),
    (["--rule", "threshold"], "needs --threshold"),
    (["--ablation", "noise"], "unknown ablation"),
])
def test_discover_arguments_are_checked_before_the_model_loads(ws, args, says):
    assert says in ws.refused("discover", NO_MODEL, *args)


def test_outputs_are_checked_before_computing(ws):
    (ws.path / "taken").write_text("an earlier file")
    for command in (["patch", NO_MODEL], ["discover", NO_MODEL]):
        assert "exists and is not a folder" in ws.refused(*command, "--out", "taken")
        assert "does not exist; create it first" in ws.refused(*command, "--out", "missing/sub/out")
    (ws.path / "out").mkdir()
    (ws.path / "out" / "circuit.json").mkdir()
    assert "is not a file" in ws.refused("discover", NO_MODEL, "--out", "out")
    assert "does not exist" in ws.refused("sae", "eval", NO_MODEL, ws.assets / "sae", "--json", "missing/e.json")
    assert "is not a file" in ws.refused("sae", "features", NO_MODEL, ws.assets / "sae", "--html", "out")


def test_demo_arguments_are_checked_before_the_model_loads(ws):
    (ws.path / "taken").write_text("an earlier file")
    assert "exists and is not a folder" in ws.refused("demo", "--out", "taken")
    assert "bad edge budget" in ws.refused("demo", "--edges", "5x", "--out", "new")


# ---------------------------------------------------------------------------------- SAE folders

def _eval(ws: Workspace, sae: Path) -> str:
    return ws.refused("sae", "eval", "organism:tiny", sae, "--n", "4", "--device", "cpu")


@pytest.mark.parametrize("change, says", [
    (lambda cfg: [cfg], "not an object"),
    (lambda cfg: {**cfg, "d_in": "abc"}, "d_in 'abc'"),
    (lambda cfg: {**cfg, "d_sae": float("nan")}, "d_sae nan"),
    (lambda cfg: {k: v for k, v in cfg.items() if k != "d_in"}, "has no d_in"),
    (lambda cfg: {**cfg, "k": 1e9}, "k 1000000000.0"),
    (lambda cfg: {**cfg, "k": -5}, "k -5"),
    (lambda cfg: {**cfg, "d_in": 8}, "W_enc has shape [16, 32]"),
    (lambda cfg: {**cfg, "metadata": ["x"]}, "metadata"),
])
def test_bad_sae_config(ws, change, says):
    sae = ws.copy("sae")
    cfg = json.loads((sae / "cfg.json").read_text())
    (sae / "cfg.json").write_text(json.dumps(change(cfg)))
    assert says in _eval(ws, sae)


def test_pickled_sae_weights_are_never_unpickled(ws):
    sae = ws.copy("sae")
    marker = ws.path.parent / "unpickled"
    # protocol-0 pickle that would call os.mkdir(marker) when loaded
    (sae / "sae_weights.safetensors").write_bytes(b"cos\nmkdir\n(V" + str(marker).encode() + b"\ntR.")
    assert "not a safetensors file" in _eval(ws, sae)
    assert not marker.exists()


def test_truncated_sae_weights(ws):
    sae = ws.copy("sae")
    weights = sae / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "truncated" in _eval(ws, sae)


def test_sae_of_another_width(ws):
    """An SAE that loads but reads 8 values per token, at a 16-wide hook: one line, not a matmul traceback."""
    from mechkit.sae.train import TrainConfig, build_training_sae

    narrow = ws.path / "narrow"
    build_training_sae(TrainConfig(architecture="topk", k=2, expansion=2), 8, {"hook_name": HOOK}).save_inference_model(
        str(narrow))
    assert "reads 8 values per token" in _eval(ws, narrow)


# ------------------------------------------------------------------------- activation caches

def _train(ws: Workspace, cache: Path, out: str = "sae-out") -> str:
    return ws.refused("sae", "train", cache, HOOK, out, "--steps", "2", "--batch-size", "32", "--expansion", "2",
                      "--k", "4")


def _manifest(cache: Path) -> Path:
    return next(cache.glob("manifest-rank*.json"))


@pytest.mark.parametrize("change, says", [
    (lambda m: "not json {", "not valid JSON"),
    (lambda m: [m], "not an object"),
    (lambda m: {k: v for k, v in m.items() if k != "hooks"}, "lists no hooks"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "n_tokens": -5}]}, "n_tokens -5"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "file": "../../../escape.safetensors"}]}, "inside its own folder"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "file": "/etc/passwd"}]}, "inside its own folder"),
    (lambda m: {**m, "hooks": ["../.."]}, "not a plain hook name"),
    (lambda m: {**m, "shards": [*m["shards"], {"file": "rank000-shard09999.safetensors", "n_tokens": 5}]},
     "does not exist"),
])
def test_bad_cache_manifest(ws, change, says):
    cache = ws.copy("cache")
    manifest = _manifest(cache)
    changed = change(json.loads(manifest.read_text()))
    manifest.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    assert says in _train(ws, cache)


def test_truncated_cache_shard(ws):
    cache = ws.copy("cache")
    shard = next((cache / HOOK).glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-64])
    assert "truncated" in _train(ws, cache)


# ---------------------------------------------------------------------------- training checkpoints

@pytest.mark.parametrize("latest, state, says", [
    ("garbage", None, "not valid JSON"),
    ([1, 2], None, "not a step-N folder"),
    ({"step": 10, "dir": "step-00000010"}, None, "not a folder"),
    ({"step": 10, "dir": "../../elsewhere"}, None, "only reference its own folder"),
    ({"step": 10, "dir": "/tmp"}, None, "only reference its own folder"),
    ({"step": 10, "dir": "step-00000010"}, "garbage", "not valid JSON"),
    ({"step": 10, "dir": "step-00000010"}, "[]", "not a mechkit checkpoint"),
])
def test_bad_checkpoint(ws, latest, state, says):
    root = ws.path / "sae-out" / "checkpoints"
    root.mkdir(parents=True)
    (root / "latest.json").write_text(latest if isinstance(latest, str) else json.dumps(latest))
    if state is not None:
        (root / "step-00000010").mkdir()
        (root / "step-00000010" / "state.json").write_text(state)
    assert says in _train(ws, ws.assets / "cache")


def test_bad_training_arguments(ws):
    assert "exists and is not a folder" in _train(ws, ws.assets / "cache", out="earlier/result.json")
    assert "k 0" in ws.refused("sae", "train", ws.assets / "cache", HOOK, "o", "--k", "0")


def test_truncated_checkpoint_tensors(ws):
    root = ws.path / "sae-out" / "checkpoints"
    (root / "step-00000010").mkdir(parents=True)
    (root / "latest.json").write_text(json.dumps({"step": 10, "dir": "step-00000010"}))
    from mechkit.sae.train import TrainConfig

    cfg = TrainConfig(architecture="topk", k=4, expansion=2, steps=2, batch_size=32)
    from dataclasses import asdict

    from mechkit.sae import ActivationCache

    key = {"train": json.loads(json.dumps(asdict(cfg))), "hook": HOOK,
           "cache": ActivationCache(ws.assets / "cache").model_fingerprint}
    (root / "step-00000010" / "state.json").write_text(json.dumps({"config": key, "step": 10}))
    header = json.dumps({"x": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    (root / "step-00000010" / "state.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert "truncated" in _train(ws, ws.assets / "cache")


# ------------------------------------------------------------------ FIFOs and token sources

def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("which", ["cfg", "weights", "manifest", "shard", "latest"])
def test_fifos_are_refused_without_hanging(ws, which):
    """Opening a FIFO for reading blocks until a writer comes: every loader refuses one first."""
    if which in ("cfg", "weights"):
        sae = ws.copy("sae")
        _replace_with_fifo(sae / ("cfg.json" if which == "cfg" else "sae_weights.safetensors"))
        assert "not a regular file" in _eval(ws, sae)
        return
    cache = ws.copy("cache")
    if which == "manifest":
        _replace_with_fifo(_manifest(cache))
    elif which == "shard":
        _replace_with_fifo(next((cache / HOOK).glob("*.safetensors")))
    else:
        (ws.path / "sae-out" / "checkpoints").mkdir(parents=True)
        os.mkfifo(ws.path / "sae-out" / "checkpoints" / "latest.json")
    assert "not a regular file" in _train(ws, cache)


def test_bad_token_sources(ws):
    os.mkfifo(ws.path / "tokens.safetensors")
    (ws.path / "text.txt").write_bytes(b"w1 w2 \xff\xfe w3")
    (ws.path / "pickle.safetensors").write_bytes(b"cos\nmkdir\n(Vx\ntR.")
    cache = ["sae", "cache", "organism:tiny", "new-cache", "--hook", HOOK, "--device", "cpu", "--source"]
    assert "not a regular file" in ws.refused(*cache, "tokens:tokens.safetensors")
    assert "not a safetensors file" in ws.refused(*cache, "tokens:pickle.safetensors")
    assert "unknown token source" in ws.refused(*cache, "file:x")
    assert "not UTF-8" in ws.refused("sae", "eval", "organism:tiny", ws.assets / "sae", "--source", "text:text.txt",
                                     "--device", "cpu")


def test_damaged_manifest_in_a_cache_being_resumed(ws):
    cache = ws.copy("cache")
    _manifest(cache).write_text("[]")
    assert "not an object" in ws.refused("sae", "cache", "organism:tiny", cache, "--hook", HOOK, "--device", "cpu")
