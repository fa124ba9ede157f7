"""Pretraining throughput: the real MedAug step against a bare loop of the same encoders.

    python benchmarks/bench_pretrain.py [--steps N] [--json PATH]

Both loops run in this process on the same MoCo model and optimiser:

(a) bare: fresh random float tensors made on the device; momentum update, query forward and
    backward, key forward, a plain InfoNCE against a fixed random queue, optimiser step;
(b) real: ``medaug.engine.pretrain.train_step`` of the MoCo method, fed from the image cache through the pair
    sampler: cache reads, batched augmentations, shuffle-BN keys, the negative strategy's
    loss over a filled queue with metadata, optimiser step, enqueue.

For every negative strategy the bare and the real steps are timed alternately, step by
step, so a change in the machine's load affects both alike; the ratio (b)/(a) of images
per second (from the fastest step of each kind; the ratio of the means is reported too)
is the share of the encoder's speed that the data path, augmentations and negatives leave
(goal >= 0.85).
FLOPs of one step are counted with ``torch.utils.flop_counter`` and compared with the
machine's measured fp32 matmul rate.  The data path (cache reads, augmentations) and the
loss path (negatives, enqueue) are also timed on their own, as a share of the real step:
on a busy machine that share is steadier than the ratio of two noisy step times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

GOAL = 0.85


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 8) -> float:
    """Measured fp32 rate of an n x n matmul (2 n^3 FLOPs), best of ``reps``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each kind")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--queue", type=int, default=4096)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--patients", type=int, default=150, help="phantom patients")
    parser.add_argument("--data", help="phantom folder to use or create (default: temporary)")
    parser.add_argument("--strategies", nargs="*", help="negative strategies (default: all)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    args = parser.parse_args(argv)

    from medaug.config import build_config
    from medaug.data.phantom import make_phantom
    from medaug.engine.data import pair_index, prepare_data
    from medaug.engine.pretrain import train_step
    from medaug.engine.schedule import build_optimizer
    from medaug.methods import get_method
    from medaug.moco.negatives import list_strategies
    from medaug.pairs import PairSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    strategies = args.strategies or list_strategies()
    tmp = tempfile.TemporaryDirectory(prefix="bench_pretrain_")
    work = Path(tmp.name)
    data_dir = Path(args.data) if args.data else work / "phantom"
    print(f"phantom: {args.patients} patients at {args.size} px in {data_dir}", file=sys.stderr)
    make_phantom(data_dir, args.patients, image_size=args.size, progress=False)
    cfg = build_config({
        "data": {"csv": str(data_dir / "train.csv"), "image_size": args.size,
                 "cache_dir": str(work / "cache")},
        "moco": {"queue_size": args.queue},
        "pretrain": {"arch": args.arch, "batch_size": args.batch,
                     "use_gpu": device.type == "cuda"},
    })
    data = prepare_data(cfg, work, progress=False)
    index = pair_index(data, cfg)
    sampler = PairSampler(index, seed=0)
    if len(index) < args.batch:
        raise SystemExit(f"only {len(index)} anchors: use more --patients")

    p = cfg.pretrain
    scaler = torch.amp.GradScaler(device.type, enabled=p.amp and device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    use_amp = p.amp and device.type == "cuda"

    def build(strategy: str):
        """The MoCo method with ``strategy`` (same initial weights every time), its optimiser."""
        cfg.moco.negatives = strategy
        torch.manual_seed(0)
        method = get_method("moco")(cfg, data, device, gen)
        method.module.train()
        optimizer = build_optimizer(p.optimizer, method.param_groups(p.weight_decay), p.lr,
                                    p.weight_decay)
        return method, optimizer

    method, optimizer = build(strategies[0])
    model = method.model

    # (a) the bare loop: fresh random inputs every step (a fixed batch would be learnt by
    # heart within a few steps, and the vanishing gradients that follow run at the speed of
    # denormal arithmetic on CPUs), and a fixed random queue.
    bank = F.normalize(torch.randn(args.queue, cfg.moco.head_dim, device=device), dim=1)  # K x C
    shape = (args.batch, 3, args.size, args.size)

    def bare_step() -> None:
        x_q = torch.randn(shape, device=device)  # B x 3 x S x S
        x_k = torch.randn(shape, device=device)  # B x 3 x S x S
        model.momentum_update()
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            q, k = model(x_q, x_k, gen)  # B x C, B x C
        l_pos = (q * k).sum(1, keepdim=True)  # B x 1
        logits = torch.cat([l_pos, q @ bank.T], dim=1) / cfg.moco.temperature  # B x (1 + K)
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    # (b) the real step's rows: anchors in a permutation, partners from the sampler.
    order = np.random.default_rng(0).permutation(len(index))
    partners = sampler.sample(0)
    anchor_rows = data.train[index.anchors[order]]
    partner_rows = data.train[partners[order]]
    n_batches = len(order) // args.batch

    def timed_pair(bare, real, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Seconds of each of n bare and n real steps, interleaved step by step so that a
        change in the machine's load hits both alike."""
        for i in range(args.warmup):
            bare(i)
            real(i)
        times = np.zeros((2, n))
        for i in range(n):
            for j, step in enumerate((bare, real)):
                _sync(device)
                t0 = time.perf_counter()
                step(args.warmup + i)
                _sync(device)
                times[j, i] = time.perf_counter() - t0
        return times[0], times[1]

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        bare_step()
    flops_per_step = counter.get_total_flops()
    # Measured before and after the steps; the better of the two is the machine's rate
    # (a busy moment can only lower it).
    peak = matmul_gflops(device)
    print(f"one step: {flops_per_step / 1e9:.1f} GFLOP ({args.arch}, batch {args.batch}, "
          f"{args.size} px, K {args.queue}, {device}, {torch.get_num_threads()} threads)")

    def overhead_ms(queue, strategy: str, reps: int = 10) -> dict[str, float]:
        """Milliseconds per step of what the real step adds to the encoders, timed alone
        (steadier than the difference of two noisy step times): the cache reads and
        augmentations of both views, and the loss's negatives plus the enqueue."""
        from medaug.data.augment import augment
        from medaug.moco.negatives import contrastive_loss

        aug = dict(hflip=p.hflip, rotation=p.rotation, crop_scale=p.crop_scale,
                   crop_ratio=tuple(p.crop_ratio))
        out = {"data": 0.0, "loss": 0.0}
        for i in range(reps):
            sl = slice((i % n_batches) * args.batch, (i % n_batches + 1) * args.batch)
            rows_q, rows_k = anchor_rows[sl], partner_rows[sl]
            _sync(device)
            t0 = time.perf_counter()
            for rows in (rows_q, rows_k):
                x = torch.from_numpy(data.cache[rows]).to(device)  # B x S x S
                augment(x, gen, args.size, **aug)  # B x 3 x S x S
            _sync(device)
            t1 = time.perf_counter()
            q = F.normalize(torch.randn(args.batch, cfg.moco.head_dim, device=device), dim=1)
            q.requires_grad_(True)
            k = F.normalize(torch.randn(args.batch, cfg.moco.head_dim, device=device), dim=1)
            q_view = torch.from_numpy(data.view[rows_q]).to(device)
            loss, _ = contrastive_loss(q, k, queue, q_view, strategy, cfg.moco.temperature,
                                       t=cfg.moco.reweight_t, m=cfg.moco.n_hard, generator=gen,
                                       q_image=torch.from_numpy(rows_q).to(device),
                                       keep_own_image=cfg.moco.keep_own_image_negatives)
            loss.backward()
            rows_t = torch.from_numpy(rows_k)
            queue.enqueue(k, torch.from_numpy(data.view[rows_k]).to(device),
                          torch.from_numpy(data.patient[rows_k]).to(device),
                          torch.from_numpy(data.study[rows_k]).to(device), rows_t.to(device))
            _sync(device)
            t2 = time.perf_counter()
            if i:  # the first repetition warms up
                out["data"] += (t1 - t0) * 1e3 / (reps - 1)
                out["loss"] += (t2 - t1) * 1e3 / (reps - 1)
        return out

    results: dict[str, dict] = {}
    for strategy in strategies:
        method, optimizer = build(strategy)
        model, queue = method.model, method.queue  # the bare step uses the same model
        # A full queue with real metadata, as after the first K / B steps of training.
        for start in range(0, args.queue, args.batch):
            rows = anchor_rows[(np.arange(args.batch) + start) % len(anchor_rows)]
            rows_t = torch.from_numpy(rows)
            queue.enqueue(
                F.normalize(torch.randn(args.batch, cfg.moco.head_dim), dim=1).to(device),
                torch.from_numpy(data.view[rows]).to(device), torch.from_numpy(data.patient[rows]).to(device),
                torch.from_numpy(data.study[rows]).to(device), rows_t.to(device),
            )

        def real_step(i: int, method=method, optimizer=optimizer) -> None:
            b = i % n_batches
            sl = slice(b * args.batch, (b + 1) * args.batch)
            train_step(method, method.module, optimizer, scaler, anchor_rows[sl],
                       partner_rows[sl])

        bare_times, real_times = timed_pair(lambda i: bare_step(), real_step, args.steps)
        # Other work on the machine only ever adds time, so the fastest step of each kind is
        # the steadiest estimate of its cost; the means are kept beside it.
        t_bare, t_real = bare_times.min(), real_times.min()
        bare_ips, real_ips = args.batch / t_bare, args.batch / t_real
        extra_ms = overhead_ms(queue, strategy)
        results[strategy] = {
            "bare_images_per_s": bare_ips,
            "real_images_per_s": real_ips,
            "ratio": real_ips / bare_ips,
            "ratio_of_means": bare_times.mean() / real_times.mean(),
            "bare_step_s": bare_times.tolist(),
            "real_step_s": real_times.tolist(),
            "bare_gflops": flops_per_step / t_bare / 1e9,
            "real_gflops": flops_per_step / t_real / 1e9,
            "overhead_ms": extra_ms,
            "overhead_share": sum(extra_ms.values()) / 1e3 / t_real,
        }
        r = results[strategy]
        print(f"{strategy:>14}: bare {bare_ips:6.1f} img/s  real {real_ips:6.1f} img/s  "
              f"ratio {r['ratio']:.3f} {'ok' if r['ratio'] >= GOAL else 'BELOW GOAL'}  "
              f"real {r['real_gflops']:.1f} GFLOP/s | data {extra_ms['data']:.1f} ms, "
              f"loss {extra_ms['loss']:.1f} ms per step = {r['overhead_share']:.1%} of the step")

    peak = max(peak, matmul_gflops(device))
    best_real = max(r["real_gflops"] for r in results.values())
    print(f"matmul fp32: {peak:.1f} GFLOP/s; the real step reaches {best_real:.1f} GFLOP/s = "
          f"{best_real / peak:.0%} of it")

    figures = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "image_size": args.size,
        "batch": args.batch,
        "queue": args.queue,
        "steps": args.steps,
        "matmul_gflops": peak,
        "real_gflops_best": best_real,
        "utilisation": best_real / peak,
        "step_gflop": flops_per_step / 1e9,
        "goal": GOAL,
        "ratios": {s: r["ratio"] for s, r in results.items()},
        "strategies": results,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
