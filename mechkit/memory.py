"""How much memory mechkit may use, and the one-line error when a job will not fit.

Every operation that allocates in proportion to a model or a batch asks here first, so that a
model or batch too big for the machine fails *before* anything is allocated (the kernel's OOM
killer gives no message and loses the work).
"""

import os

from mechkit.errors import MechkitError

GiB = 1024**3

# Share of the memory available now that mechkit plans to use by default: the rest is left for
# the interpreter, the allocator's slack and whatever else the machine runs.
DEFAULT_SHARE = 0.5
# On a CPU, chunks past a few thousand tokens per forward run no faster, so the default working
# memory stops here however much the machine has.
DEFAULT_CPU_CAP = 3 * GiB


class MemoryBudgetError(MechkitError):
    """A job that needs more memory than the budget allows."""


def available_bytes() -> int:
    """Memory available to new allocations now (``MemAvailable``; cgroup limit when lower)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except ImportError:  # no way to tell: assume a laptop-sized machine
            available = 8 * GiB
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            available = min(available, int(text))
    return available


def parse_size(text: str | int | float) -> int:
    """``"6GB"``, ``"512MiB"``, ``"0.5"`` (a share of available memory) or a byte count, in bytes."""
    if isinstance(text, (int, float)):
        value = float(text)
        return int(value * available_bytes()) if 0 < value <= 1 else int(value)
    raw = text.strip().lower().replace(" ", "")
    units = {"tib": 1024**4, "tb": 10**12, "gib": GiB, "gb": 10**9, "g": GiB, "mib": 1024**2,
             "mb": 10**6, "m": 1024**2, "kib": 1024, "kb": 1000, "b": 1}
    for suffix, scale in units.items():
        if raw.endswith(suffix):
            number = raw[: -len(suffix)]
            break
    else:
        number, scale = raw, None
    try:
        value = float(number)
    except ValueError:
        raise MemoryBudgetError(
            f"memory size {text!r} is not understood: write e.g. 6GB, 512MiB, or 0.5 for half of the available memory"
        ) from None
    if not value > 0:
        raise MemoryBudgetError(f"memory size {text!r} must be positive")
    if scale is None:
        return int(value * available_bytes()) if value <= 1 else int(value)
    return int(value * scale)


def budget_bytes(max_memory: str | int | float | None = None, device: str | None = None) -> int:
    """The working-memory budget of one operation in bytes (beyond the model's own weights).

    ``max_memory`` when given (bytes, ``"6GB"``, or a share of available memory such as 0.5),
    else ``$MECHKIT_MAX_MEMORY``, else :data:`DEFAULT_SHARE` of the memory available now, at most
    :data:`DEFAULT_CPU_CAP` on a CPU. On a CUDA ``device`` available memory is the GPU's."""
    if max_memory is None:
        max_memory = os.environ.get("MECHKIT_MAX_MEMORY")
    if max_memory is None:
        if device is not None and str(device).startswith("cuda"):
            import torch

            return int(DEFAULT_SHARE * torch.cuda.mem_get_info(torch.device(device))[0])
        return int(min(DEFAULT_SHARE * available_bytes(), DEFAULT_CPU_CAP))
    return parse_size(max_memory)


def format_bytes(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 1024**2:.0f} MiB"


def check_fits(needed: int, what: str, *, available: int | None = None) -> None:
    """Raise :class:`MemoryBudgetError` when ``needed`` bytes exceed what is available now."""
    available = available_bytes() if available is None else available
    if needed > available:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(needed)} of memory but only {format_bytes(available)} "
            "is available: free memory, use a smaller model, or load it on a bigger machine"
        )
