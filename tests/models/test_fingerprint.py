"""fingerprint: stable across processes and devices, sensitive to one changed weight."""

import subprocess
import sys

import torch

from mechkit import fingerprint, load_model


def test_same_weights_same_fingerprint_across_processes(tiny_organism_dir):
    here = fingerprint(load_model("organism:tiny", device="cpu"))
    code = "import mechkit; print(mechkit.fingerprint(mechkit.load_model('organism:tiny', device='cpu')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip().splitlines()[-1] == here
    assert here.startswith("sha256:") and len(here) == len("sha256:") + 64


def test_one_changed_weight_changes_fingerprint(tiny_organism_dir):
    model = load_model("organism:tiny", device="cpu")
    before = fingerprint(model)
    with torch.no_grad():
        model.blocks[1].attn.W_Q[0, 0, 0] += 1e-6
    assert fingerprint(model) != before
    with torch.no_grad():
        model.blocks[1].attn.W_Q[0, 0, 0] -= 1e-6
    # restoring the exact value need not restore bits (float rounding), so compare a reload
    assert fingerprint(load_model("organism:tiny", device="cpu")) == before


def test_dtype_is_part_of_the_fingerprint(tiny_organism_dir):
    a = load_model("organism:tiny", device="cpu")
    b = load_model("organism:tiny", device="cpu", dtype=torch.float64)
    assert fingerprint(a) != fingerprint(b)


def test_device_independent(tiny_organism_dir):
    model = load_model("organism:tiny", device="cpu")
    if not torch.cuda.is_available():
        # CPU-only: a copy of the state dict in a fresh module must hash the same
        clone = load_model("organism:tiny", device="cpu")
        clone.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
        assert fingerprint(clone) == fingerprint(model)
    else:  # pragma: no cover - GPU machines
        assert fingerprint(model.to("cuda")) == fingerprint(model.to("cpu"))
