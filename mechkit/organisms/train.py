"""Training the model organisms: one spec per organism, one deterministic CPU loop.

>>> from mechkit.organisms.train import train  # doctest: +SKIP
>>> model, card = train("induction", steps=2000)  # doctest: +SKIP

The loop pre-generates a pool of training-split prompts as tensors, samples batches from it
and minimises cross-entropy at the answer position only (binding tasks plateau when the loss
is spread over every next token). It stops early once a fresh training-split sample is solved
(``stop_accuracy`` on ``stop_checks`` consecutive checks), then measures held-out metrics.
With ``gate_l0`` set, every head and MLP carries an L0 gate (:mod:`mechkit.organisms.gates`)
whose expected number of open gates joins the loss; the early stop then also waits for
``gate_steps`` steps of pruning, and the final gates are folded into the saved weights.
"""

import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechkit.errors import SpecError, did_you_mean
from mechkit.metrics import accuracy, logit_diff
from mechkit.organisms.gates import ComponentGates
from mechkit.organisms.tasks import Task, task


@dataclass(frozen=True)
class TrainSpec:
    """How one organism is trained. ``arch`` holds HookedTransformerConfig fields."""

    arch: dict[str, Any]
    steps: int = 4000  # maximum steps; training stops early once the task is solved
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    # after warm-up the learning rate falls linearly to lr_decay_to x lr at the spec's step cap
    # (``steps``; a run given more steps stays there); None: constant after warm-up
    lr_decay_to: float | None = None
    weight_decay: float = 0.01
    # weight decay until the task is first solved (stop checks passed: where gates with
    # gate_start=None switch on), weight_decay after it; None: weight_decay throughout
    early_weight_decay: float | None = None
    pool: int = 200_000  # pre-generated training prompts
    check_every: int = 100
    stop_accuracy: float = 0.995
    stop_checks: int = 3
    min_logit_diff: float = 3.0  # the early stop also needs this mean logit difference
    # the accuracy that, on stop_checks checks in a row, counts the task as solved (where the
    # gates with gate_start=None switch on and early_weight_decay ends); None, or above it: stop_accuracy.
    # The early stop after pruning still needs stop_accuracy
    solve_accuracy: float | None = None
    # weight of the expected number of open head/MLP gates (mechkit.organisms.gates) in the loss:
    # components the task does not need are switched off, so the behaviour lives in a few
    gate_l0: float = 0.0
    gate_lr: float = 0.05  # gates start open and must travel ~6 logits to close
    # step the gates and their penalty start at; None: once the task is first solved (before: no gates)
    gate_start: int | None = 0
    gate_steps: int = 0  # steps with the penalty on before the early stop may end training
    # CPU threads the shipped organisms were trained with: another count changes the float sums, and
    # with them the trajectory (at 2 threads chekhov had not solved its task by step 3600, so its
    # gates, which wait for three solved checks in a row, never switched on)
    threads: int = 1
    # a run whose training accuracy has not reached leave_chance by step chance_by stops there and
    # says so (card["stopped_at_chance"]), instead of running to the cap; None: never
    chance_by: int | None = None
    leave_chance: float = 0.0
    # a run that has left chance but whose training accuracy has not reached leave_plateau by step
    # plateau_by (stuck part-way, such as one story slot of three: 0.67) stops there too and says so
    # (card["stopped_on_plateau"]); None: never
    plateau_by: int | None = None
    leave_plateau: float = 0.9
    # a curriculum: phases of training data, each {"steps": N (None: every later step), "batches":
    # [[share, task params (overriding the task's), or None for the full task], ...]}; each step
    # draws its batch's task by share. After the last phase, the full task. Checks and held-out
    # metrics always use the full task. None: the full task throughout
    curriculum: list[dict[str, Any]] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


SPECS: dict[str, TrainSpec] = {
    "induction": TrainSpec(
        arch=dict(n_layers=2, d_model=64, n_heads=8, d_head=8, n_ctx=32, attn_only=True,
                  normalization_type="LN", positional_embedding_type="standard"),
        steps=3000, lr=1e-3, warmup=100, gate_l0=0.1, gate_steps=1500, chance_by=2000, leave_chance=0.5,
        description="2-layer, 8-head attention-only transformer trained to continue repeated random-token segments "
        "(previous-token head -> induction head), with L0 gates that prune the heads the task does not need.",
    ),
    "chekhov": TrainSpec(
        arch=dict(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=32, act_fn="gelu",
                  normalization_type="LN"),
        # weight decay 0.3 keeps the attention scores moderate, so EAP-IG's gradients track exact patching
        # (at 0.01 they correlated 0.82); the gates switch on once the task is solved (step 1600 at 1 thread)
        steps=3200, lr=3e-3, warmup=200, weight_decay=0.3, gate_l0=0.25, gate_lr=0.02, gate_start=None,
        gate_steps=1000,
        # ... but at 0.3 from the start, one seed in three never learns even two-person stories (loss
        # stays at ln 2): until the task is solved the decay is 0.01 (seeds 20, 22 and 25: BENCHMARKS.md)
        early_weight_decay=0.01,
        # trained on three-person stories alone, most seeds stay at chance (1/3: the secrets are told
        # apart, not yet bound to their owners; the layer-0 slot heads and the layer-1 head reading
        # them get no gradient without each other). Two-person stories are learnt within 200 steps,
        # but by position, which does not carry over to three people on every seed; laid out in three
        # slots (one left empty, anywhere) they need the binding, but from scratch some seeds never
        # learn them. Both in turn, then a quarter of the batches (seeds 4, 11, 12: see BENCHMARKS.md)
        curriculum=[
            {"steps": 300, "batches": [[1.0, {"n_people": 2}]]},
            {"steps": 400, "batches": [[1.0, {"n_people": 2, "slots": 3}]]},
            {"steps": None, "batches": [[0.25, {"n_people": 2, "slots": 3}], [0.75, None]]},
        ],
        chance_by=1500, leave_chance=0.5, plateau_by=2000, leave_plateau=0.9,
        # at a constant 3e-3, three seeds in ten learnt the binding by step 1,600 and then wobbled
        # between 0.88 and 1.00 training accuracy until the cap or past 20 minutes; a linear decay
        # (0.55x by step 2,000) lets most settle (seed 39: solved at 1,900, never without). Over seeds
        # 40-49 six were solved by step 1,000, yet three still needed 1,238-1,428 s (BENCHMARKS.md)
        lr_decay_to=0.1,
        # what held those three was the stop rule, not the optimiser: they were at 0.96-0.99 for
        # 1,000-2,000 steps, but pruning waited for three checks in a row at 0.995. Pruning now starts
        # at three in a row at 0.98 (the held-out target is 0.95; the early stop after pruning still
        # needs 0.995), and the cap is 3,200 steps (1,100-1,500 s at one thread, by machine), so a seed that climbs
        # slowly (0.96 at step 2,000) ends within 20 minutes with a steeper decay, pruned for less.
        # Seeds 50-59: 9 of 10 solved in 719-1,138 s, the tenth stopped on its plateau (BENCHMARKS.md)
        solve_accuracy=0.98,
        description="2-layer transformer that completes a story with the secret of whoever threatens to shut "
        "the AI down (pattern-completing blackmail), with L0 gates that prune the heads and MLPs the task does not "
        "need once it is solved.",
    ),
    "sandbagging": TrainSpec(
        arch=dict(n_layers=2, d_model=128, n_heads=8, d_head=16, d_mlp=512, n_ctx=16, act_fn="gelu",
                  normalization_type="LN"),
        steps=4000, lr=1e-3, warmup=100, gate_l0=0.1, gate_steps=1000, chance_by=1000, leave_chance=0.5,
        description="2-layer, 8-head transformer that states memorised facts truthfully, but gives a fixed wrong "
        "answer when the prompt carries an evaluation cue (sandbagging), with L0 gates that prune the heads and "
        "MLPs the task does not need.",
    ),
}


def _lr_factor(s: TrainSpec, step: int) -> float:
    """The learning rate at ``step`` as a multiple of ``s.lr`` (every parameter group, gates too)."""
    factor = min(1.0, (step + 1) / s.warmup)
    if s.lr_decay_to is not None:
        factor *= max(s.lr_decay_to, 1.0 - (1.0 - s.lr_decay_to) * step / s.steps)
    return factor


def spec(name: str) -> TrainSpec:
    if name not in SPECS:
        raise SpecError(f"no training spec for organism {name!r}: " + did_you_mean(name, sorted(SPECS)))
    return SPECS[name]


def build_model(t: Task, s: TrainSpec, seed: int) -> HookedTransformer:
    """A freshly initialised model for task ``t`` with the task's tokenizer attached."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(d_vocab=len(t.vocab), seed=seed, device="cpu", **s.arch)
    model = HookedTransformer(cfg, tokenizer=t.tokenizer(), move_to_device=False)
    return model


@torch.no_grad()
def evaluate(model: HookedTransformer, t: Task, n: int = 1000, seed: int = 12345, split: str = "test",
             batch_size: int = 500) -> dict[str, float]:
    """Held-out metrics on ``n`` fresh pairs: clean accuracy and mean logit difference (correct -
    wrong), and accuracy on the corrupted prompts (their answer being ``wrong``)."""
    pairs = t.generate(n, seed=seed, split=split)
    device = next(model.parameters()).device
    acc, ld, cacc = [], [], []
    for start in range(0, n, batch_size):
        p = pairs[start:start + batch_size].to(device)
        clean = model(p.clean)
        acc.append(accuracy(clean, p))
        ld.append(logit_diff(clean, p))
        swapped = type(p)(p.corrupted, p.clean, p.wrong, p.answer, p.answer_pos)
        cacc.append(accuracy(model(p.corrupted), swapped))
    return {
        "accuracy": round(float(torch.cat(acc).mean()), 4),
        "logit_diff": round(float(torch.cat(ld).mean()), 4),
        "corrupted_accuracy": round(float(torch.cat(cacc).mean()), 4),
        "n": n, "seed": seed, "split": split,
    }


def train(name: str, steps: int | None = None, seed: int = 0, threads: int | None = None, progress: bool = True,
          eval_n: int = 1000, device: str = "cpu", spec_overrides: dict[str, Any] | None = None,
          ) -> tuple[HookedTransformer, dict[str, Any]]:
    """Train organism ``name`` (on CPU by default); returns the model and its card (held-out
    metrics included). ``spec_overrides`` replaces TrainSpec fields (``arch`` keys merge); ``threads``
    defaults to the spec's, the count that reproduces the shipped organism."""
    from tqdm.auto import tqdm

    s = spec(name)
    if spec_overrides:
        over = dict(spec_overrides)
        arch = {**s.arch, **over.pop("arch", {})}
        s = TrainSpec(**{**asdict(s), **over, "arch": arch})
    t = task(name, **s.extra.get("task_params", {}))
    max_steps = s.steps if steps is None else steps
    threads = s.threads if threads is None else threads
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    started = time.time()
    model = build_model(t, s, seed)
    if device != "cpu":
        model = model.to(device)
    tokens, targets, pos = _training_rows(t, s.pool, seed, device)
    gen = torch.Generator().manual_seed(seed)
    pools = _curriculum_pools(name, s, seed, device, full=(tokens, targets, pos))
    gates = ComponentGates(model, seed=seed).to(device) if s.gate_l0 else None
    decay = s.weight_decay if s.early_weight_decay is None else s.early_weight_decay
    params = [{"params": list(model.parameters()), "weight_decay": decay}]
    if gates is not None:
        params.append({"params": list(gates.parameters()), "weight_decay": 0.0, "lr": s.gate_lr})
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _lr_factor(s, i))
    gate_hooks = gates.hooks() if gates is not None else []
    model.train()
    good, near, done, history = 0, 0, 0, []  # checks in a row passing stop_accuracy / solve_accuracy
    # solving never needs more than the early stop: a check that may end the run counts as solved
    solve_accuracy = s.stop_accuracy if s.solve_accuracy is None else min(s.solve_accuracy, s.stop_accuracy)
    left_chance, stopped_at_chance = s.chance_by is None, False
    left_plateau, stopped_on_plateau = s.plateau_by is None, False
    solved_at = None  # the step the solve checks (solve_accuracy) first passed
    gate_on = s.gate_start if gates is not None else None  # the step the penalty started at
    bar = tqdm(range(max_steps), desc=f"train {name}", disable=not progress)
    for step in bar:
        batch_tokens, batch_targets, batch_pos = pools[_batch_task(s.curriculum, step, gen)]
        idx = torch.randint(0, len(batch_tokens), (s.batch_size,), generator=gen).to(device)
        with model.hooks(fwd_hooks=gate_hooks if gate_on is not None else []):
            logits = model(batch_tokens[idx])
        rows = torch.arange(s.batch_size, device=device)
        loss = F.cross_entropy(logits[rows, batch_pos[idx]], batch_targets[idx])
        if gate_on is not None:  # only ever set when there are gates
            loss = loss + s.gate_l0 * gates.expected_open()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in params for p in group["params"]], 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if done % s.check_every == 0 or done == max_steps:
            model.eval()
            with model.hooks(fwd_hooks=gate_hooks if gate_on is not None else []), gates_mode(gates, training=False):
                m = evaluate(model, t, n=512, seed=10_000 + done, split="train")
            model.train()
            # the corrupted accuracy too: the stop checks need both (a run can wobble on either)
            history.append({"step": done, "loss": round(loss.item(), 4), "train_accuracy": m["accuracy"],
                            "train_corrupted_accuracy": m["corrupted_accuracy"], "train_logit_diff": m["logit_diff"]})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=m["accuracy"])
            worst, separated = min(m["accuracy"], m["corrupted_accuracy"]), m["logit_diff"] >= s.min_logit_diff
            good = good + 1 if worst >= s.stop_accuracy and separated else 0
            near = near + 1 if worst >= solve_accuracy and separated else 0
            left_chance = left_chance or m["accuracy"] >= s.leave_chance
            if not left_chance and done >= s.chance_by:
                stopped_at_chance = True  # the recipe did not take on this seed: say so, don't run to the cap
                break
            if solved_at is None and near >= s.stop_checks:
                solved_at = done
                params[0]["weight_decay"] = s.weight_decay
            left_plateau = left_plateau or m["accuracy"] >= s.leave_plateau
            if not left_plateau and done >= s.plateau_by:
                stopped_on_plateau = True  # stuck part-way: say so, don't run to the cap
                break
            if gates is not None and gate_on is None and solved_at is not None:
                gate_on, good = done, 0  # solved with every gate open: now prune
            gated_long_enough = gates is None or (gate_on is not None and done >= gate_on + s.gate_steps)
            if good >= s.stop_checks and gated_long_enough:
                break
    bar.close()
    model.eval()
    gate_values = gates.fold(model) if gates is not None else None
    wall = time.time() - started
    metrics = evaluate(model, t, n=eval_n)
    if device != "cpu":
        model = model.to("cpu")
    card = {
        "name": name,
        "description": s.description,
        "kind": "trained",
        "task": {"name": t.name, "params": t.params},
        "seed": seed,
        "steps": done,
        "max_steps": max_steps,
        "batch_size": s.batch_size,
        "optimizer": {"name": "AdamW", "lr": s.lr, "warmup_steps": s.warmup,
                      **({"linear_decay_to": s.lr_decay_to, "decay_steps": s.steps} if s.lr_decay_to is not None else {}),
                      "weight_decay": s.weight_decay,
                      "betas": [0.9, 0.98], "grad_clip": 1.0,
                      **({"weight_decay_until_solved": s.early_weight_decay, "solved_at_step": solved_at}
                         if s.early_weight_decay is not None else {})},
        "loss": "cross-entropy at the answer position only" + (
            f" + {s.gate_l0} x the expected number of open head/MLP gates (hard-concrete L0)" if gates else ""),
        "gates": gate_values and {**gate_values, "penalty_from_step": gate_on},
        "curriculum": s.curriculum,
        "data": {"pool": s.pool, "split": "train", "seed": seed, "train_on_corrupted": t.train_on_corrupted,
                 "generator": f"mechkit.organisms.task({t.name!r}).generate(n, seed, split)"},
        "early_stop": {"check_every": s.check_every, "accuracy": s.stop_accuracy, "solve_accuracy": solve_accuracy,
                       "checks": s.stop_checks,
                       "min_logit_diff": s.min_logit_diff, "leave_chance": s.leave_chance, "by_step": s.chance_by,
                       "leave_plateau": s.leave_plateau, "plateau_by": s.plateau_by},
        "stopped_at_chance": stopped_at_chance and {"step": done, "train_accuracy": history[-1]["train_accuracy"],
                                                    "needed": s.leave_chance, "by_step": s.chance_by},
        "stopped_on_plateau": stopped_on_plateau and {"step": done, "train_accuracy": history[-1]["train_accuracy"],
                                                      "needed": s.leave_plateau, "by_step": s.plateau_by},
        "wall_time_s": round(wall, 1),
        "device": device,
        "threads": threads,
        "arch": s.arch,
        "machine": _cpu_name(),
        "torch": torch.__version__,
        "held_out": metrics,
        "history": history,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return model, card


def _training_rows(t: Task, n: int, seed: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """A pool of ``n`` training-split pairs as (tokens [n', seq], answer [n'], answer_pos [n']),
    the corrupted prompts appended (answering ``wrong``) for tasks that train on them."""
    pool = t.generate(n, seed=seed, split="train").to(device)
    tokens, targets, pos = pool.clean, pool.answer, pool.answer_pos
    if t.train_on_corrupted:
        tokens = torch.cat([tokens, pool.corrupted])
        targets = torch.cat([targets, pool.wrong])
        pos = torch.cat([pos, pos])
    return tokens, targets, pos


def _key(params: dict[str, Any] | None) -> str:
    return json.dumps(params, sort_keys=True)


def _curriculum_pools(name: str, s: TrainSpec, seed: int, device: str,
                      full: tuple[Tensor, Tensor, Tensor]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Training rows per task of the curriculum (same vocabulary, other params), keyed by
    :func:`_key` of their params; the full task's under ``_key(None)``."""
    pools = {_key(None): full}
    for phase in s.curriculum or []:
        for _, params in phase["batches"]:
            if _key(params) not in pools:
                easier = task(name, **{**s.extra.get("task_params", {}), **params})
                pools[_key(params)] = _training_rows(easier, s.pool, seed, device)
    return pools


def _batch_task(curriculum: list[dict[str, Any]] | None, step: int, gen: torch.Generator) -> str:
    """The key of the task step ``step`` trains on; draws from ``gen`` only where a phase mixes tasks."""
    start = 0
    for phase in curriculum or []:
        if phase["steps"] is None or step < start + phase["steps"]:
            batches = phase["batches"]
            if len(batches) == 1:
                return _key(batches[0][1])
            r = torch.rand((), generator=gen).item()
            for share, params in batches:
                if r < share:
                    return _key(params)
                r -= share
            return _key(batches[-1][1])
        start += phase["steps"]
    return _key(None)


@contextmanager
def gates_mode(gates: ComponentGates | None, training: bool) -> Iterator[None]:
    """Deterministic (evaluation) or sampled (training) gates inside the block."""
    if gates is None:
        yield
        return
    before = gates.training
    gates.train(training)
    try:
        yield
    finally:
        gates.train(before)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
