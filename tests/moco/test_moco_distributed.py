"""Shuffle-BN across two gloo workers against a single-process reimplementation."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD, B = 2, 4


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, 3, 32, 32, generator=g)  # the global batch, rank-major


def _model():
    from medaug.moco.model import MoCo

    torch.manual_seed(0)
    return MoCo("resnet18", hidden=32, dim=8, bn_groups=1).train()


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from medaug.moco.model import concat_all_gather
        from medaug.moco.queue import KeyQueue

        model = _model()
        x = _inputs()[rank * B : (rank + 1) * B]
        # Only rank 0's permutation counts: the others draw a different one on purpose.
        k = model.key(x, generator=torch.Generator().manual_seed(5 + rank))
        gathered = concat_all_gather(torch.full((2,), float(rank)))
        queue = KeyQueue(16, 8)
        ids = torch.arange(rank * B, (rank + 1) * B)
        queue.enqueue(k, ids % 2, ids, ids, ids)
        torch.save(
            {"k": k, "gathered": gathered, "queue": queue.state_dict()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned workers: about half a minute
@pytest.mark.timeout(300)
def test_shuffle_bn_across_workers(tmp_path):
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn"
    )
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # Reference: rank 0's permutation splits the global batch into per-worker BN batches.
    torch.set_num_threads(1)
    model = _model()
    x = _inputs()
    perm = torch.randperm(WORLD * B, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        parts = [model.encoder_k(x[perm[r * B : (r + 1) * B]]) for r in range(WORLD)]
    k_all = torch.nn.functional.normalize(torch.cat(parts), dim=1)[torch.argsort(perm)]
    for r in range(WORLD):
        torch.testing.assert_close(results[r]["k"], k_all[r * B : (r + 1) * B], atol=1e-5, rtol=0)
        assert results[r]["gathered"].tolist() == [0.0, 0.0, 1.0, 1.0]
    # Every worker enqueued the same global batch, in rank order.
    q0, q1 = results[0]["queue"], results[1]["queue"]
    for name in q0:
        assert torch.equal(q0[name], q1[name]), name
    assert q0["image"][: WORLD * B].tolist() == list(range(WORLD * B))
    torch.testing.assert_close(q0["keys"][: WORLD * B], k_all, atol=1e-5, rtol=0)
    assert int(q0["ptr"]) == WORLD * B
