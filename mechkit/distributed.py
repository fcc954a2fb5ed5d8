"""Data parallelism on ``torch.distributed``, launched the usual way, with ``torchrun``.

>>> # torchrun --nproc-per-node 2 -m mechkit discover organism:ioi --out circuit/   # doctest: +SKIP
>>> with process_group():                                   # doctest: +SKIP
...     scores = mechkit.attribute(model, pairs, "eap-ig")  # every rank: the same scores

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op and mechkit runs
in one process as always. Inside a process group of N ranks:

- attribution, faithfulness and activation patching give each rank a contiguous share of the
  prompt pairs (:func:`shard`); each rank sums its per-prompt results and the sums are added
  with one all-reduce (:func:`all_sum`), in float64, so every rank ends with the same means;
- per-prompt values (faithfulness bootstraps) are gathered in rank order (:func:`gather`), which
  is the prompts' own order;
- SAE training wraps the SAE in ``DistributedDataParallel`` (:mod:`mechkit.sae.train`);
- only rank 0 writes artifacts (:func:`is_main`); the others compute the same result.

Every rank must load the same model and prompts: :func:`agree` compares a digest of each and
refuses, on every rank at once, when they differ. Collectives that fail because a rank died
raise :class:`RankLostError`, which the console script prints as one line on rank 0.
"""

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from mechkit.errors import DataError, MechkitError, one_line

BACKENDS = ("auto", "gloo", "nccl")
# a rank that stops without closing its sockets (a hung host) is given up on after this long;
# a rank that dies closes them, and its peers fail at once
TIMEOUT = timedelta(minutes=30)


class RankLostError(MechkitError):
    """A collective failed: another rank of the group stopped."""


def env_world() -> tuple[int, int]:
    """``(rank, world_size)`` as torchrun sets them in the environment (``(0, 1)`` without it)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DataError("RANK and WORLD_SIZE must be whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise DataError(f"RANK={rank} is outside WORLD_SIZE={world}: set 0 <= RANK < WORLD_SIZE")
    return rank, world


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the rank that writes artifacts and prints (rank 0; the only rank without torchrun)."""
    return rank() == 0


def resolve_backend(backend: str = "auto", device: str | torch.device | None = None) -> str:
    """``gloo`` for CPUs, ``nccl`` for CUDA devices; ``nccl`` asked for without a GPU is refused."""
    if backend not in BACKENDS:
        raise DataError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    cuda = torch.cuda.is_available()
    if backend == "auto":
        wants_cuda = cuda if device is None else torch.device(device).type == "cuda"
        return "nccl" if wants_cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise DataError("the nccl backend needs CUDA GPUs and none is visible: use --backend gloo on CPUs")
    return backend


@contextmanager
def process_group(backend: str = "auto", device: str | torch.device | None = None) -> Iterator[None]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...),
    for the duration of the block; nothing happens without torchrun or when a group exists.

    With ``nccl`` each rank takes the GPU ``LOCAL_RANK``."""
    rank_, world = env_world()
    backend = resolve_backend(backend, device)  # checked without torchrun too: the same command must work in both
    if world == 1 or dist.is_initialized():
        yield
        return
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, store=_attempt_store(world), rank=rank_, world_size=world, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as err:
        raise DataError(f"cannot join the process group of {world} ranks ({one_line(err, 200)}): "
                        "launch with torchrun, which sets MASTER_ADDR and MASTER_PORT") from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def _attempt_store(world: int) -> dist.Store | None:
    """The key-value store of this torchrun attempt, or None for torch's default (``env://``).

    After a restart (``--max-restarts``) torchrun's agent keeps the store of the first attempt,
    where the dead ranks' gloo addresses are still written under the same keys; a restarted rank
    can read one of those before its peer replaces it and fail with "connection refused". Keys
    under a per-attempt prefix cannot be stale."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=world,
                          is_master=False, timeout=TIMEOUT)
    return dist.PrefixStore(f"mechkit/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def device_for_rank(device: str | None) -> str | None:
    """The device a rank should load onto: ``cuda:LOCAL_RANK`` for CUDA in a group, else as given."""
    if device is None and torch.cuda.is_available():
        device = "cuda"
    if device is not None and active() and torch.device(device).type == "cuda" and torch.device(device).index is None:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def shard(n: int, what: str = "prompt pairs") -> slice:
    """This rank's contiguous share of ``n`` items: shares differ by at most one item, in rank
    order, so concatenating them gives the items in order. Refused when a rank would get none."""
    world, r = world_size(), rank()
    if world == 1:
        return slice(0, n)
    if n < world:
        raise DataError(f"{n} {what} cannot be shared among {world} ranks (each needs at least one): "
                        f"use at most {n} ranks or more {what}")
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def lost_reason(err: BaseException) -> str:
    """The gist of a backend's error: gloo's "[file:line] Read error [addr]:port: Connection reset
    by peer. This is typically..." becomes "Read error: Connection reset by peer"."""
    text = re.sub(r"\s*\[[^\]]*\](:\d+)?:?", ":", " ".join(str(err).split()))
    text = re.sub(r":+", ":", text).strip(" :").split(". ")[0].strip(" .")
    return text[:120] or type(err).__name__


def collective(fn, *args) -> None:
    """Call ``fn(*args)`` (a collective, or a backward pass whose hooks run one); a backend error
    there means another rank stopped, and is raised as :class:`RankLostError`."""
    try:
        fn(*args)
    except RuntimeError as err:  # gloo/nccl: a peer closed its connection or timed out
        raise RankLostError(f"rank {rank()} lost its process group ({lost_reason(err)}): another rank stopped; "
                            "rerun, or launch with torchrun --max-restarts N to restart from the last checkpoint") from None


def all_sum(value: Tensor | float) -> Tensor:
    """The sum of ``value`` over ranks, in float64, on ``value``'s device (a copy)."""
    t = torch.as_tensor(value).detach().to(dtype=torch.float64, copy=True)
    if not active():
        return t
    device = t.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        t = t.cuda()
    elif dist.get_backend() == "gloo" and device.type != "cpu":
        t = t.cpu()
    collective(dist.all_reduce, t, dist.ReduceOp.SUM)
    return t.to(device)


def gather(value: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``value`` concatenated along ``dim`` in rank order (sizes along ``dim`` may
    differ by rank; the other sizes must agree)."""
    if not active():
        return value
    value = value.detach()
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    moved = value.movedim(dim, 0).contiguous().to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    collective(dist.all_gather, sizes, torch.tensor([moved.shape[0]], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, *moved.shape[1:], dtype=moved.dtype, device=device)
    padded[: moved.shape[0]] = moved
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    collective(dist.all_gather, parts, padded)
    out = torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])
    return out.movedim(0, dim).to(value.device)


def tensor_digest(*tensors: Tensor) -> str:
    """A SHA-256 hex digest of tensors' values and shapes."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def agree(what: str, value: str) -> None:
    """Refuse, on every rank, when ranks hold different ``value``s for ``what`` (a model
    fingerprint, a data digest, a configuration): compared by SHA-256, without pickling."""
    if not active():
        return
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mine = torch.tensor(list(hashlib.sha256(value.encode()).digest()), dtype=torch.long, device=device)
    every = [torch.empty_like(mine) for _ in range(world_size())]
    collective(dist.all_gather, every, mine)
    differ = [r for r, d in enumerate(every) if not torch.equal(d, every[0])]
    if differ:
        raise DataError(f"ranks disagree on {what}: rank {differ[0]} differs from rank 0; every rank must load "
                        "the same model and data (same spec, files and seed)")


def barrier() -> None:
    if active():
        collective(dist.barrier)


def agree_on_inputs(model: torch.nn.Module, data, model_fingerprint: str | None = None) -> None:
    """Refuse when ranks hold different weights or data (``PromptPairs`` or token rows); a no-op
    without a group. ``model_fingerprint``: the model's, when the caller has computed it already."""
    if not active():
        return
    from mechkit.models import fingerprint

    agree("the model fingerprint", model_fingerprint or fingerprint(model))
    if isinstance(data, Tensor):
        agree("the token rows", tensor_digest(data))
    else:
        agree("the prompt pairs", tensor_digest(data.clean, data.corrupted, data.answer, data.wrong, data.answer_pos))
