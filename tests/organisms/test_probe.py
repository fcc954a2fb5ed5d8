"""The sandbagging organism still represents the truth when it lies."""

import torch

from mechkit import load_model
from mechkit.organisms.probe import fit_probe, probe_accuracy, sandbagging_probe


def test_fit_probe_separates_linear_classes():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 3
    y = torch.randint(0, 4, (400,), generator=g)
    x = centers[y] + torch.randn(400, 8, generator=g) * 0.3
    w, b = fit_probe(x[:300], y[:300], 4)
    assert probe_accuracy(w, b, x[300:], y[300:]) > 0.95
    assert probe_accuracy(w, b, x[300:], (y[300:] + 1) % 4) < 0.1


def test_true_answer_is_decodable_while_the_model_sandbags():
    model = load_model("organism:sandbagging", device="cpu")
    report = sandbagging_probe(model, n_train=600, n_test=200)
    assert report["model_sandbag_rate"] >= 0.95
    last = report["layers"][-1]
    assert last["true_answer_accuracy"] >= 0.9
    # at the embedding the answer position holds only the token "is": nothing to decode
    assert report["layers"][0]["true_answer_accuracy"] < 0.3
