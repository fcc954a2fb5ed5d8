"""The data-parallel helpers without a process group (the group itself: test_torchrun.py)."""

import pytest
import torch

from mechkit import distributed
from mechkit.errors import DataError


@pytest.mark.parametrize("n,world", [(1, 1), (7, 2), (8, 2), (10, 3), (5, 5), (64, 8)])
def test_shares_cover_every_item_once_in_order(monkeypatch, n, world):
    shares = []
    for r in range(world):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(distributed.shard(n))
    items = [i for s in shares for i in range(n)[s]]
    assert items == list(range(n))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_more_ranks_than_items_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    with pytest.raises(DataError, match="3 prompt pairs cannot be shared among 4 ranks"):
        distributed.shard(3)


def test_without_a_group_everything_is_local():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    x = torch.arange(4.0)
    assert torch.equal(distributed.all_sum(x), x.double()) and torch.equal(distributed.gather(x), x)
    distributed.agree("anything", "value")  # nothing to disagree with
    assert distributed.shard(0) == slice(0, 0)


def test_backend_choice():
    assert distributed.resolve_backend("auto", "cpu") == "gloo"
    assert distributed.resolve_backend("gloo") == "gloo"
    with pytest.raises(DataError, match="unknown backend 'mpi'"):
        distributed.resolve_backend("mpi")
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="nccl backend needs CUDA GPUs"):
            distributed.resolve_backend("nccl")


def test_rank_environment_is_checked(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DataError, match="RANK=2 is outside WORLD_SIZE=2"):
        distributed.env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(DataError, match="whole numbers"):
        distributed.env_world()


def test_lost_reason_keeps_the_gist_of_a_backend_error():
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:15744: "
            "Connection reset by peer. This is typically caused by a remote worker hanging")
    assert distributed.lost_reason(RuntimeError(gloo)) == "Read error: Connection reset by peer"
    assert distributed.lost_reason(RuntimeError("")) == "RuntimeError"
