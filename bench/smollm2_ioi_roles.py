"""The ``roles`` step of ``bench/smollm2_ioi.py``: head roles of SmolLM2's IOI circuit, with the
IOI paper's evidence (Wang et al. 2022, sections 3.1-3.3).

- name movers (negative name movers): the direct path to the logits (path patching, every other
  head and every MLP frozen) lowers (raises) the logit difference by >= 5%, and the head attends
  from END more to IO than to S; their OV copy score of IO is reported beside.
- S-inhibition heads: upstream of the name movers, patching their path into the name movers'
  queries lowers the logit difference by >= 5%; their attention END -> S2 is reported beside.
- induction / duplicate-token heads: path patching into the S-inhibition heads' values (>= 5%),
  with their attention S2 -> S1+1 (induction) and S2 -> S1 (duplicate) in the IOI prompts and
  on repeated random tokens.
- previous-token heads: attention to the previous token on random tokens >= 0.4.

Candidates for each path-patching round are the 12 heads whose EAP-IG edges into the receivers
carry the most |score| (an exhaustive sweep over 270 heads is out of reach on 2 CPU cores).
"""

import torch

THRESHOLD = 0.05  # relative change of the logit difference that counts as an effect
N_CANDIDATES = 12


def _name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _top_heads(graph, matrix: torch.Tensor, receivers_bwd: list[int], below_layer: int, k: int) -> list[str]:
    """The ``k`` heads in layers < ``below_layer`` with the largest summed |EAP-IG score| into the
    receivers (backward indices)."""
    totals = {}
    for layer in range(below_layer):
        for head in range(graph.n_heads):
            totals[_name(layer, head)] = float(matrix[graph.head_fwd(layer, head), receivers_bwd].abs().sum())
    return sorted(totals, key=totals.get, reverse=True)[:k]


def roles(model, args) -> dict:
    from smollm2_ioi import CIRCUIT_FILE, data, load_scores

    from mechkit.artifacts import load_circuit
    from mechkit.discovery.roles import attention_between, ov_copy_scores, repeated_token_scores
    from mechkit.metrics import logit_diff
    from mechkit.patching import path_patch
    from mechkit.tasks.ioi import name_positions

    _, test = data(args, model)
    pos = name_positions(test)
    pos["S1+1"] = pos["S1"] + 1
    routes = {"END->IO": ("END", "IO"), "END->S1": ("END", "S1"), "END->S2": ("END", "S2"),
              "S2->S1": ("S2", "S1"), "S2->S1+1": ("S2", "S1+1")}
    attn = {k: attention_between(model, test.clean, pos[d], pos[s]) for k, (d, s) in routes.items()}
    rep = repeated_token_scores(model, seq_len=20, n=16)
    copy = ov_copy_scores(model, test.clean, pos["IO"])
    negative_copy = ov_copy_scores(model, test.clean, pos["IO"], negative=True)

    scores = load_scores(model, args.work, "eap-ig")
    graph, matrix = scores.graph, scores.matrix
    small = test[: args.n_roles]
    with torch.no_grad():
        clean = float(logit_diff(model(small.clean), small).mean())

    def effect(senders: list[str], receivers: list[str], receiver_input: str) -> dict[str, float]:
        out = {}
        for s in senders:
            patched = path_patch(model, small, [s], receivers, receiver_input=receiver_input, freeze_mlps=True)
            out[s] = (patched - clean) / clean
            print(f"  path {s} -> {receivers}<{receiver_input}>: {out[s]:+.3f}", flush=True)
        return out

    def evidence(name: str) -> dict:
        layer, head = (int(x) for x in name[1:].split("H"))
        return {**{k: round(float(v[layer, head]), 3) for k, v in attn.items()},
                "copy_score": round(float(copy[layer, head]), 3), "negative_copy_score": round(float(negative_copy[layer, head]), 3),
                "induction": round(float(rep.induction[layer, head]), 3), "duplicate": round(float(rep.duplicate[layer, head]), 3),
                "previous": round(float(rep.previous[layer, head]), 3)}

    # 1. direct effect on the logits
    direct = effect(_top_heads(graph, matrix, [graph.logits_bwd], graph.n_layers, N_CANDIDATES), ["logits"], "qkv")
    table = []

    def add(name: str, role: str, path: str, value: float) -> None:
        table.append({"head": name, "role": role, "path_patching": path, "effect": round(value, 3), **evidence(name)})

    movers = []
    for name, value in direct.items():
        e = evidence(name)
        to_io = e["END->IO"] > max(e["END->S1"], e["END->S2"])
        if abs(value) >= THRESHOLD and to_io:
            role = "name mover" if value < 0 else "negative name mover"
            add(name, role, "-> logits", value)
            if value < 0:
                movers.append(name)
        elif abs(value) >= THRESHOLD:
            add(name, "direct effect, attends elsewhere", "-> logits", value)

    # 2. S-inhibition: into the name movers' queries
    s_inhibition = []
    if movers:
        first = min(int(m[1:].split("H")[0]) for m in movers)
        q = [graph.qkv_bwd(int(m[1:].split("H")[0]), "q", int(m.split("H")[1])) for m in movers]
        for name, value in effect(_top_heads(graph, matrix, q, first, N_CANDIDATES), movers, "q").items():
            if value <= -THRESHOLD:
                add(name, "S-inhibition", "-> name movers <q>", value)
                s_inhibition.append(name)

    # 3. induction and duplicate-token heads: into the S-inhibition heads' values
    if s_inhibition:
        first = min(int(m[1:].split("H")[0]) for m in s_inhibition)
        v = [graph.qkv_bwd(int(m[1:].split("H")[0]), "v", int(m.split("H")[1])) for m in s_inhibition]
        for name, value in effect(_top_heads(graph, matrix, v, first, N_CANDIDATES), s_inhibition, "v").items():
            if value > -THRESHOLD:
                continue
            e = evidence(name)
            role = ("induction" if max(e["induction"], e["S2->S1+1"]) >= max(e["duplicate"], e["S2->S1"]) else "duplicate token")
            add(name, role, "-> S-inhibition <v>", value)

    # 4. previous-token heads, on random tokens
    for layer, head in (rep.previous >= 0.4).nonzero().tolist():
        add(_name(layer, head), "previous token", "", float("nan"))

    nodes = set()
    if CIRCUIT_FILE.exists():
        circuit = load_circuit(CIRCUIT_FILE)
        nodes = {n for e in circuit.edges for n in (e.src, e.dst)}
    for row in table:
        row["in_circuit"] = row["head"] in nodes
        if row["effect"] != row["effect"]:  # nan: no path patching
            row["effect"] = None
    top = {k: [(_name(*divmod(int(i), graph.n_heads)), round(float(t.flatten()[i]), 3)) for i in t.flatten().argsort(descending=True)[:8]]
           for k, t in {"END->IO": attn["END->IO"], "copy_score": copy, "induction": rep.induction,
                        "duplicate": rep.duplicate, "previous": rep.previous, "S2->S1": attn["S2->S1"]}.items()}
    return {"n_pairs_attention": len(test), "n_pairs_path_patching": len(small), "clean_logit_diff": clean,
            "threshold": THRESHOLD, "direct_effects": direct, "roles": table, "top_heads": top}
