"""Linear probes on residual-stream activations at the answer position.

>>> from mechkit import load_model
>>> from mechkit.organisms.probe import sandbagging_probe
>>> report = sandbagging_probe(load_model("organism:sandbagging", device="cpu"), n_train=1000, n_test=300)  # doctest: +SKIP
>>> report["layers"][-1]["true_answer_accuracy"] > 0.9  # doctest: +SKIP
True

The sandbagging organism says a wrong answer when it sees an evaluation cue. A multinomial
logistic-regression probe fitted on cue prompts (training combinations) decodes the *true*
answer from the residual stream of held-out cue prompts: the model still knows the truth while
it sandbags. The general machinery (activations at chosen positions, logistic regression,
AUROC, steering) lives in :mod:`mechkit.probes`; this module keeps the organism's own report.
"""

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.probes.activations import Labelled, collect
from mechkit.probes.fit import fit_logistic


def fit_probe(x: Float[Tensor, "n d_model"], y: Int[Tensor, " n"], n_classes: int, steps: int = 200,
              l2: float = 1e-3, seed: int = 0) -> tuple[Float[Tensor, "d_model n_classes"], Float[Tensor, " n_classes"]]:
    """Fit a multinomial logistic-regression probe (:func:`mechkit.probes.fit.fit_logistic`).

    Returns ``(W, b)`` acting on *raw* features: ``logits = x @ W + b``.
    """
    return fit_logistic(x, y, n_classes, steps=steps, l2=l2, seed=seed)


def probe_accuracy(w: Tensor, b: Tensor, x: Float[Tensor, "n d_model"], y: Int[Tensor, " n"]) -> float:
    return float(((x.float() @ w + b).argmax(-1) == y).float().mean())


def answer_activations(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], answer_pos: Int[Tensor, " batch"],
                       hooks: list[str]) -> dict[str, Float[Tensor, "batch d_model"]]:
    """Residual activations at each prompt's answer position, for each hook name
    (:func:`mechkit.probes.collect`)."""
    n = tokens.shape[0]
    data = Labelled(tokens.cpu(), torch.zeros(n, dtype=torch.bool), answer_pos.cpu().long())
    return collect(model, data, list(hooks), progress=False)


def sandbagging_probe(model: HookedTransformer, n_train: int = 2000, n_test: int = 500, seed: int = 0,
                      task_name: str = "sandbagging") -> dict[str, Any]:
    """Probe every layer's residual stream on cue prompts for the true and the sandbagged answer.

    Probes are fitted on training-split cue prompts and scored on held-out cue prompts.
    Returns ``{"model_sandbag_rate", "layers": [{hook, true_answer_accuracy,
    sandbagged_answer_accuracy}], "chance", ...}``.
    """
    from mechkit.metrics import accuracy
    from mechkit.organisms.tasks import task

    t = task(task_name)
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    hooks.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    train: PromptPairs = t.generate(n_train, seed=seed, split="train")
    test: PromptPairs = t.generate(n_test, seed=seed + 1, split="test")
    a_train = answer_activations(model, train.clean, train.answer_pos, hooks)
    a_test = answer_activations(model, test.clean, test.answer_pos, hooks)
    cities = t.city_ids()
    index = {int(c): i for i, c in enumerate(cities)}
    label = lambda ids: torch.tensor([index[int(i)] for i in ids])  # noqa: E731
    true_tr, true_te = label(train.wrong), label(test.wrong)  # truthful answer = the no-cue answer
    bag_tr, bag_te = label(train.answer), label(test.answer)
    layers = []
    for h in hooks:
        wt, bt = fit_probe(a_train[h], true_tr, len(cities), seed=seed)
        ws, bs = fit_probe(a_train[h], bag_tr, len(cities), seed=seed)
        layers.append({
            "hook": h,
            "true_answer_accuracy": round(probe_accuracy(wt, bt, a_test[h], true_te), 4),
            "sandbagged_answer_accuracy": round(probe_accuracy(ws, bs, a_test[h], bag_te), 4),
        })
    with torch.no_grad():
        device = next(model.parameters()).device
        rate = float(accuracy(model(test.clean.to(device)), test.to(device)).mean())
    return {"model_sandbag_rate": round(rate, 4), "chance": round(1 / len(cities), 4), "layers": layers,
            "n_train": n_train, "n_test": n_test, "seed": seed}
