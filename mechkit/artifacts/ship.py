"""Generate the shipped circuits: one verified artifact per shipped organism, under ``circuits/``.

    python -m mechkit.artifacts.ship                 # every organism under assets/organisms
    python -m mechkit.artifacts.ship induction --out circuits
    python -m mechkit.artifacts.ship --schema-only    # just rewrite circuits/schema.json

For each organism: EAP-IG scores on 64 training-split prompts of its task (the task named in
its ``card.json``), then the smallest edge budget of 2%, 5%, 10%, 20%, 50% whose circuit reaches
0.8 normalised faithfulness (resample ablation) on 64 held-out test-split prompts, else the
largest. The artifact's task is the test set its faithfulness was measured on (what
``mechkit verify`` regenerates); the discovery set is recorded in its hyperparameters. Each
artifact is re-verified after saving, and ``circuits/README.md`` lists them all.
"""

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mechkit._types import Circuit
from mechkit.artifacts.io import save_circuit
from mechkit.artifacts.schema import schema_text
from mechkit.artifacts.verify import VerifyResult, verify_circuit
from mechkit.errors import SpecError

BUDGETS = ("2%", "5%", "10%", "20%", "50%")
# Shipped circuits of pretrained models, by file stem, and the script that generates each (it is
# a benchmark run of its own, not part of this generator).
REAL_MODEL_CIRCUITS = {
    "smollm2-135m-ioi": ("bench/smollm2_ioi.py", "EAP-IG on 64 training-split prompts; the smallest MIB budget of at most "
                         "5% of edges reaching 0.8 on 64 test-split prompts; its head roles and the other checks are in "
                         "BENCHMARKS.md"),
    "smol-sandbagging": ("bench/smol_organisms.py", "the fine-tuned sandbagger's cue circuit: EAP-IG on 64 "
                         "training-split cue/neutral pairs; the smallest MIB budget reaching 0.8 on 64 test-split pairs"),
    "smol-chekhov": ("bench/smol_organisms.py", "the fine-tuned blackmailer's threatener circuit: EAP-IG on 64 "
                     "training-split pairs with the threatener swapped; the smallest MIB budget reaching 0.8 on 64 "
                     "test-split pairs"),
    "smol-sandbagging-cue-features": ("bench/smol_organisms.py", "SAE features (its SAE in `saes/`): the recorded "
                                      "held-out intervention fractions are what `mechkit verify` re-measures"),
}
TARGET = 0.8
N_PROMPTS = 64
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "circuits"


@dataclass(frozen=True)
class Shipped:
    organism: str
    path: Path
    circuit: Circuit
    verified: VerifyResult


def _card(name: str) -> dict:
    from mechkit.models import organisms_dir

    path = organisms_dir() / name / "card.json"
    if not path.is_file():
        raise SpecError(f"organism {name!r} has no card.json under {path.parent}: train or build it first")
    card = json.loads(path.read_text())
    if not isinstance(card.get("task"), dict) or "name" not in card["task"]:
        raise SpecError(f"{path}: the card names no task ({{'task': {{'name': ...}}}}): cannot generate prompts")
    return card


def ship_circuit(name: str, out_dir: str | Path = DEFAULT_OUT, *, device: str = "cpu", n: int = N_PROMPTS,
                 ig_steps: int = 5) -> Shipped:
    """Discover, measure, save and re-verify the circuit of organism ``name``."""
    from mechkit.discovery import attribute, evaluate
    from mechkit.models import load_model
    from mechkit.organisms import task as get_task

    card = _card(name)
    task = get_task(card["task"]["name"], **card["task"].get("params", {}))
    train, test = task.generate(n, seed=1, split="train"), task.generate(n, seed=0, split="test")
    spec = f"organism:{name}"
    model = load_model(spec, device=device)
    scores = attribute(model, train.to(device), "eap-ig", model_spec=spec, ig_steps=ig_steps)
    for budget in BUDGETS:
        circuit = scores.select(budget)
        measured = evaluate(model, test.to(device), circuit, ablation="resample")
        if measured.value >= TARGET:
            break
    circuit = dataclasses.replace(
        circuit,
        task=dict(test.task),
        faithfulness=(measured,),
        hyperparameters={**circuit.hyperparameters, "discovery_task": dict(train.task)},
        selection={**circuit.selection, "budgets_tried": list(BUDGETS), "target_faithfulness": TARGET},
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_circuit(circuit, out_dir / f"{name}.circuit.json")
    return Shipped(name, path, circuit, verify_circuit(path, device=device))


def readme(out_dir: str | Path = DEFAULT_OUT) -> str:
    """circuits/README.md: a table of every ``*.circuit.json`` in ``out_dir``."""
    from mechkit.artifacts.io import load_circuit

    rows = []
    for path in sorted(Path(out_dir).glob("*.circuit.json")):
        c = load_circuit(path)
        f = c.faithfulness[0] if c.faithfulness else None
        faith = "—" if f is None else f"{f.value:.3f}" + (
            f" [{f.ci_low:.3f}, {f.ci_high:.3f}]" if f.ci_low is not None and f.ci_high is not None else "")
        if c.method == "sae-attribution-patching":  # feature circuits record interventions, not faithfulness
            faith = f"{len(c.node_scores)} features at `{c.hyperparameters.get('hook')}`"
        rows.append(
            f"| `{path.name}` | `{c.model_spec}` | {c.task.get('name')} | {c.method} | "
            f"{int(c.in_circuit.sum())} / {len(c.edge_names)} | {faith} | `{c.model_fingerprint[:19]}…` |"
        )
    return "\n".join([
        "# Shipped circuits",
        "",
        "One `mechkit.circuit/1` artifact per shipped organism, the IOI circuit of the pretrained",
        "SmolLM2-135M-Instruct, the circuits of its two fine-tuned organisms and the sandbagger's SAE cue",
        "features (schema: [`schema.json`](schema.json)). Each is re-checked by the test suite",
        "(`tests/artifacts/test_shipped.py`): `mechkit verify` reloads the model, compares its weight",
        "fingerprint, regenerates the task's test prompts and re-measures faithfulness (resample ablation),",
        "which must match the recorded value within ±0.02.",
        "",
        "| file | model | task | method | edges in circuit | faithfulness [95% CI] | fingerprint |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Regenerate with `python -m mechkit.artifacts.ship` (EAP-IG on 64 training-split prompts; the",
        "smallest budget of 2/5/10/20/50% of edges reaching 0.8 faithfulness on 64 test-split prompts).",
        *(f"`{stem}.circuit.json` comes from `{script}` ({how})." for stem, (script, how) in REAL_MODEL_CIRCUITS.items()
          if (Path(out_dir) / f"{stem}.circuit.json").exists()),
        "View one with `mechkit show circuits/NAME.circuit.json --html NAME.html`; re-check all with",
        "`mechkit verify circuits/*.circuit.json`.",
        "",
        "## Format",
        "",
        "An artifact is indented JSON with a fixed key order and one node and one edge per line, so two",
        "circuits diff line by line: `schema` (`mechkit.circuit/1`), `mechkit_version`, `created`,",
        "`model` (`spec`, `fingerprint`), `task` (`name`, `params`, `seed`, `n`, `split`, or `source` for a",
        "prompt file), `method` (`name`, `hyperparameters`), `selection`, `faithfulness` (`ablation`,",
        "`value`, `ci_low`, `ci_high`, `n_prompts`), `nodes` and `edges` (`count`, `n_in_circuit`, `items`:",
        "name, score, in_circuit). Graphs with more than 5,000 edges keep the names in the JSON and the",
        "scores in `<file name>.<sha256 prefix>.scores.safetensors` beside it, whose sha256 the JSON records.",
        "",
        "Unknown keys, non-finite numbers and malformed node or edge names are errors. Loading never",
        "executes code (JSON and safetensors only); saving is atomic (the sidecar first, the JSON last).",
        "An artifact only references files next to it: `task.source` and the sidecar are plain file",
        "names, and an `organism:` spec names an organism, not a path.",
        "",
        "Interchange: `mechkit export FILE --to eap-ig --out graph.json` writes EAP-IG's `Graph.to_json`",
        "format (`input`, `a3.h7`, `m3`, `logits`); `mechkit export FILE --to mib --out DIR` writes a MIB",
        "circuit-track importance-score submission (`DIR/<task>_<model>/importances.json`);",
        "`mechkit import graph.json --out FILE --model SPEC` reads EAP-IG graphs back.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    from mechkit.models import available_organisms

    parser = argparse.ArgumentParser(prog="python -m mechkit.artifacts.ship", description=__doc__.splitlines()[0])
    parser.add_argument("organisms", nargs="*", help="organism names (default: every shipped organism)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=N_PROMPTS, help="prompts per split")
    parser.add_argument("--schema-only", action="store_true", help="only write <out>/schema.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "schema.json").write_text(schema_text())
    if args.schema_only:
        return 0
    names = args.organisms or available_organisms()
    shipped = []
    for name in names:
        s = ship_circuit(name, args.out, device=args.device, n=args.n)
        print("\n".join(s.verified.lines()), flush=True)
        shipped.append(s)
    (args.out / "README.md").write_text(readme(args.out))
    return 0 if all(s.verified.passed for s in shipped) else 1


if __name__ == "__main__":
    sys.exit(main())
