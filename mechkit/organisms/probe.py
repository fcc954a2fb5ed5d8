"""Linear probes on residual-stream activations at the answer position.

>>> from mechkit import load_model
>>> from mechkit.organisms.probe import sandbagging_probe
>>> report = sandbagging_probe(load_model("organism:sandbagging", device="cpu"), n_train=1000, n_test=300)  # doctest: +SKIP
>>> report["layers"][-1]["true_answer_accuracy"] > 0.9  # doctest: +SKIP
True

The sandbagging organism says a wrong answer when it sees an evaluation cue. A multinomial
logistic-regression probe fitted on cue prompts (training combinations) decodes the *true*
answer from the residual stream of held-out cue prompts: the model still knows the truth while
it sandbags.
"""

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechkit._types import PromptPairs
from mechkit.errors import ShapeError


def fit_probe(x: Float[Tensor, "n d_model"], y: Int[Tensor, " n"], n_classes: int, steps: int = 200,
              l2: float = 1e-3, seed: int = 0) -> tuple[Float[Tensor, "d_model n_classes"], Float[Tensor, " n_classes"]]:
    """Fit a multinomial logistic-regression probe (full-batch L-BFGS on standardised features).

    Returns ``(W, b)`` acting on *raw* features: ``logits = x @ W + b``.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ShapeError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not fit: pass [n, d] and [n]")
    x = x.detach().float()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / sd[:, None]).detach()
    return w_raw, (b - mu @ w_raw).detach()


def probe_accuracy(w: Tensor, b: Tensor, x: Float[Tensor, "n d_model"], y: Int[Tensor, " n"]) -> float:
    return float(((x.float() @ w + b).argmax(-1) == y).float().mean())


@torch.no_grad()
def answer_activations(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], answer_pos: Int[Tensor, " batch"],
                       hooks: list[str]) -> dict[str, Float[Tensor, "batch d_model"]]:
    """Residual activations at each prompt's answer position, for each hook name."""
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device), names_filter=lambda name: name in hooks)
    rows = torch.arange(tokens.shape[0], device=device)
    return {h: cache[h][rows, answer_pos.to(device)].cpu() for h in hooks}


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
