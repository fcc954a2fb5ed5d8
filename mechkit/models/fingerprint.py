"""``fingerprint``: a stable sha256 of a model's weights, to bind artifacts to exact weights."""

import hashlib

import torch


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict: each tensor's name, shape, dtype and raw bytes, in name order.

    The same weights give the same fingerprint in any process and on any device (tensors are
    hashed from CPU copies); one changed weight gives a different one.

    >>> import torch
    >>> fingerprint(torch.nn.Linear(2, 2, bias=False))[:7]
    'sha256:'
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        # view as bytes so bfloat16 and friends hash without a numpy round-trip
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()
