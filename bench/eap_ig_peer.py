"""mechkit's EAP-IG against the EAP-IG reference library (hannamw/EAP-IG) on SmolLM2-135M.

    .venv/bin/python bench/eap_ig_peer.py --peer-src /tmp/eap-ig-src/src [--n 8 32] [--threads 2]

The reference library is NOT shipped with mechkit and is not a dependency: get its source and
point ``--peer-src`` at its ``src`` folder (it is added to ``sys.path`` only inside the peer's
worker process)::

    git clone https://github.com/hannamw/EAP-IG /tmp/eap-ig-src    # package ``eap``

It needs only TransformerLens, einops, tqdm and matplotlib, which mechkit's environment has.

Both libraries score the same prompt pairs on the same model: SmolLM2-135M (30 layers, 9 query
and 3 key/value heads, rotary) as ``mechkit.load_model("smollm2-135m")`` loads it, IOI pairs
from ``mechkit.tasks.task("ioi", templates=[0]).generate(n, seed=0, model=model)``, with
EAP-IG-inputs at ``ig_steps`` 5 and the logit difference answer - wrong at the answer position.

Each library runs in its own worker process (so each peak RSS is its own; the parent reads it
with ``os.wait4``, which also works for a worker that is killed). A worker whose resident memory
passes ``--mem-limit`` is killed and recorded as such.

What the reference library is given, and the two run-time adaptations it needs on a CPU:

- its ``attribute(model, graph, dataloader, metric, method="EAP-IG-inputs", ig_steps=5)`` with a
  dataloader of ``(clean, corrupted, labels)`` batches; it tokenizes strings itself (always
  prepending BOS), so ``eap.attribute.tokenize_plus`` is replaced by one that passes mechkit's
  token ids through unchanged (no padding: one template gives equal lengths), so both libraries
  see identical tokens;
- it allocates its score matrix with ``device="cuda"``; ``eap.attribute``'s ``torch.zeros`` is
  redirected to the model's device;
- the metric returns the SUM of the per-prompt logit differences: the library divides its scores
  by the number of prompts, so the scores are means over prompts, as mechkit's are;
- model flags it asserts: ``use_split_qkv_input``, ``use_attn_result``, ``use_hook_mlp_in``,
  ``ungroup_grouped_query_attention`` all True.

Its edge names (``input->a1.h3<q>``, ``m3``, ``logits``) are mapped to mechkit's with
``mechkit.artifacts.interchange.edge_to_eap_ig``. Output: ``bench/results/eap-ig-peer-cpu.json``.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
TEMPLATES = [0]


# --------------------------------------------------------------------------- workers


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import mechkit

    t0 = time.perf_counter()
    model = mechkit.load_model(MODEL, device="cpu")
    pairs = mechkit.tasks.task("ioi", templates=TEMPLATES).generate(args.n, seed=0, model=model)
    return mechkit, model, pairs, time.perf_counter() - t0


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker_mechkit(args) -> dict:
    mechkit, model, pairs, t_load = _setup(args)
    from mechkit.metrics import logit_diff

    rss_before = _rss_gb()
    w0, c0 = time.perf_counter(), time.process_time()
    scores = mechkit.discovery.attribute(model, pairs, "eap-ig", ig_steps=args.steps)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    np.save(args.scores, scores.scores.numpy().astype(np.float64))
    import torch

    with torch.no_grad():
        clean = logit_diff(model(pairs.clean), pairs).mean().item()
        corrupted = logit_diff(model(pairs.corrupted), pairs).mean().item()
    conv = scores.convergence
    return {
        "edge_names_hash": hash_names(scores.edge_names),
        "n_edges": len(scores.edge_names),
        "tokens": [list(pairs.clean.shape)],
        "clean_tokens_sum": int(pairs.clean.sum()),
        "corrupted_tokens_sum": int(pairs.corrupted.sum()),
        "answer_pos": pairs.answer_pos.tolist(),
        "load_s": t_load,
        "attribute_wall_s": wall,
        "attribute_cpu_s": cpu,
        "peak_rss_before_attribute_gb": rss_before,
        "metric_clean": clean,
        "metric_corrupted": corrupted,
        "convergence": None if conv is None else {k: _jsonable(v) for k, v in vars(conv).items()},
    }


def worker_peer(args) -> dict:
    mechkit, model, pairs, t_load = _setup(args)
    import torch

    sys.path.insert(0, str(Path(args.peer_src).resolve()))
    try:
        import eap.attribute as eap_attribute
        from eap.graph import Graph as EapGraph
    except ImportError as err:
        raise SystemExit(
            f"cannot import the EAP-IG reference library from {args.peer_src!r} ({err}); it is not "
            "shipped with mechkit: git clone https://github.com/hannamw/EAP-IG and pass its src folder"
        ) from None
    from mechkit.artifacts.interchange import edge_to_eap_ig
    from mechkit.discovery.graph import Graph

    device = model.cfg.device

    class _TorchOnModelDevice:
        """``torch`` as eap.attribute sees it: zeros(device="cuda") lands on the model's device."""

        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def zeros(*shape, device=None, **kw):
            return torch.zeros(*shape, device=model.cfg.device if device == "cuda" else device, **kw)

    def tokenize_plus(model_, tokens, max_length=None):
        # mechkit's token ids, unchanged: no padding (equal lengths), so input_lengths = n_pos
        tokens = tokens.to(device)
        mask = torch.ones_like(tokens)
        return tokens, mask, mask.sum(1), tokens.shape[1]

    eap_attribute.torch = _TorchOnModelDevice()
    eap_attribute.tokenize_plus = tokenize_plus

    def metric(logits, clean_logits, input_lengths, labels):
        # labels: [answer, wrong, answer_pos]; sum over prompts (the library divides by their number)
        rows = torch.arange(logits.shape[0], device=logits.device)
        last = logits[rows, labels[:, 2].to(logits.device)]
        return (last[rows, labels[:, 0]] - last[rows, labels[:, 1]]).sum()

    cfg = model.cfg
    cfg.use_split_qkv_input = True
    cfg.use_attn_result = True
    cfg.use_hook_mlp_in = True
    cfg.ungroup_grouped_query_attention = True

    labels = torch.stack([pairs.answer, pairs.wrong, pairs.answer_pos], 1)
    bs = args.peer_batch or len(pairs)
    loader = [(pairs.clean[i : i + bs], pairs.corrupted[i : i + bs], labels[i : i + bs]) for i in range(0, len(pairs), bs)]
    graph = EapGraph.from_model(model)

    rss_before = _rss_gb()
    w0, c0 = time.perf_counter(), time.process_time()
    eap_attribute.attribute(model, graph, loader, metric, method="EAP-IG-inputs", ig_steps=args.steps, quiet=True)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0

    names = Graph.from_model(model).edge_names  # mechkit's order
    idx = [graph.edges[edge_to_eap_ig(n)].matrix_index for n in names]
    rows_, cols_ = zip(*idx)
    vec = graph.scores[list(rows_), list(cols_)].double().numpy()
    np.save(args.scores, vec)
    return {
        "edge_names_hash": hash_names(names),
        "n_edges": len(graph.edges),
        "tokens": [list(pairs.clean.shape)],
        "clean_tokens_sum": int(pairs.clean.sum()),
        "corrupted_tokens_sum": int(pairs.corrupted.sum()),
        "answer_pos": pairs.answer_pos.tolist(),
        "batch_size": bs,
        "load_s": t_load,
        "attribute_wall_s": wall,
        "attribute_cpu_s": cpu,
        "peak_rss_before_attribute_gb": rss_before,
    }


def hash_names(names) -> str:
    import hashlib

    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()


# --------------------------------------------------------------------------- parent


def _vm_rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_worker(which: str, args, workdir: Path) -> dict:
    scores = workdir / f"{which}-{args.n_now}.npy"
    meta = workdir / f"{which}-{args.n_now}.json"
    cmd = [sys.executable, __file__, "--worker", which, "--n", str(args.n_now), "--steps", str(args.steps),
           "--threads", str(args.threads), "--scores", str(scores), "--meta", str(meta), "--peer-src", args.peer_src,
           "--peer-batch", str(args.peer_batch)]
    w0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    killed_at, sampled = None, 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _vm_rss_gb(proc.pid)
        sampled = max(sampled, rss)
        if rss > args.mem_limit and killed_at is None:
            killed_at = rss
            proc.kill()
        time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = {
        "returncode": proc.returncode,
        "process_wall_s": time.perf_counter() - w0,
        "process_cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gb": usage.ru_maxrss / 2**20,
    }
    if killed_at is not None:
        out["killed"] = f"killed by this benchmark at {killed_at:.1f} GB resident (--mem-limit {args.mem_limit} GB)"
    elif proc.returncode < 0:
        out["killed"] = f"killed by signal {-proc.returncode} (peak {out['peak_rss_gb']:.1f} GB)"
    if proc.returncode == 0:
        out.update(json.loads(meta.read_text()))
        out["scores_path"] = str(scores)
    return out


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    k = max(1, round(0.01 * len(a)))
    top_a = set(np.argsort(-np.abs(a))[:k].tolist())
    top_b = set(np.argsort(-np.abs(b))[:k].tolist())
    scale = max(np.abs(a).max(), np.abs(b).max())
    return {
        "pearson": float(pearsonr(a, b)[0]),
        "spearman": float(spearmanr(a, b)[0]),
        "pearson_negated_peer": float(pearsonr(a, -b)[0]),
        "max_abs_diff": float(np.abs(a - b).max()),
        "max_abs_score": float(scale),
        "max_abs_diff_rel": float(np.abs(a - b).max() / scale),
        "top1pct_k": k,
        "top1pct_overlap": len(top_a & top_b) / k,
        "sum_mechkit": float(a.sum()),
        "sum_peer": float(b.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-src", required=True, help="the EAP-IG reference library's src folder (not shipped; see above)")
    parser.add_argument("--n", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-batch", type=int, default=0, help="the reference library's batch size (0: all prompts)")
    parser.add_argument("--mem-limit", type=float, default=16.0, help="GB resident at which a worker is killed")
    parser.add_argument("--peer-commit", default="", help="the reference library's commit, when --peer-src is not a git checkout")
    parser.add_argument("--machine", default="")
    parser.add_argument("--out", default=str(ROOT / "bench/results/eap-ig-peer-cpu.json"))
    parser.add_argument("--worker", choices=["mechkit", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--scores", help=argparse.SUPPRESS)
    parser.add_argument("--meta", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.n = args.n[0]
        result = (worker_mechkit if args.worker == "mechkit" else worker_peer)(args)
        Path(args.meta).write_text(json.dumps(result))
        return

    if not (Path(args.peer_src) / "eap" / "attribute.py").is_file():
        raise SystemExit(
            f"{args.peer_src!r} holds no eap/attribute.py. The EAP-IG reference library is not shipped with "
            "mechkit: git clone https://github.com/hannamw/EAP-IG /tmp/eap-ig-src and pass --peer-src /tmp/eap-ig-src/src"
        )
    import torch

    try:
        peer_commit = subprocess.run(["git", "-C", str(Path(args.peer_src).parent), "rev-parse", "HEAD"],
                                     capture_output=True, text=True).stdout.strip() or None
    except OSError:
        peer_commit = None
    peer_commit = args.peer_commit or peer_commit
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "machine": args.machine or f"{os.cpu_count()}-core {platform.machine()} CPU",
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "mechkit_commit": commit,
        "peer": "hannamw/EAP-IG (package eap), not shipped",
        "peer_commit": peer_commit,
        "model": MODEL,
        "task": {"name": "ioi", "templates": TEMPLATES, "seed": 0},
        "method": {"mechkit": "eap-ig", "peer": "EAP-IG-inputs", "ig_steps": args.steps, "metric": "logit_diff"},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            args.n_now = n
            row = {"n_prompts": n, "load_average_before": [round(x, 2) for x in os.getloadavg()]}
            print(f"n={n}: mechkit ...", flush=True)
            row["mechkit"] = run_worker("mechkit", args, Path(tmp))
            print(f"n={n}: reference library ...", flush=True)
            row["peer"] = run_worker("peer", args, Path(tmp))
            m, p = row["mechkit"], row["peer"]
            if m["returncode"] == 0 and p["returncode"] == 0:
                same = all(m[k] == p[k] for k in ("edge_names_hash", "tokens", "clean_tokens_sum", "corrupted_tokens_sum", "answer_pos"))
                row["same_prompts_and_edges"] = same
                row["comparison"] = compare(np.load(m.pop("scores_path")), np.load(p.pop("scores_path")))
                row["speed_ratio_wall"] = p["attribute_wall_s"] / m["attribute_wall_s"]
                row["speed_ratio_cpu"] = p["attribute_cpu_s"] / m["attribute_cpu_s"]
                row["peak_ratio"] = p["peak_rss_gb"] / m["peak_rss_gb"]
            for side in (m, p):
                side.pop("scores_path", None)
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
            # written after every row, so that a later, larger run that is stopped keeps the earlier ones
            meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
