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

The multi-view MAE (``ratios["mvmae"]``) is timed the same way, on its own model and AdamW:

(a) bare: fresh random grey views and view codes, the encoder on a fixed set of V visible
    patches per view (the same count as the real masks), the decoder, a plain MSE on every
    patch, backward, optimiser step;
(b) real: ``train_step`` of the ``mvmae`` method on frontal/lateral pairs of one study
    (``patient_same_study_distinct_lat``): cache reads, per-view augmentation, independent
    masks, reconstruction of the hidden patches and the alignment at beta = beta_max,
    gradient clipping, optimiser step.

Beside it, the encoder's forward time on one batch at mask ratio 0.93 against 0 (all
patches), next to the ratio of their token counts (1 + V) / (1 + L): masked tokens are
never encoded, so the time should follow the tokens.
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
    parser.add_argument("--methods", nargs="+", default=["moco", "mvmae"],
                        choices=["moco", "mvmae"], help="methods to time (default: both)")
    parser.add_argument("--mvmae-vit", default="vit_tiny",
                        help="the MAE's encoder size (medaug.mvmae.config.VIT_SIZES); its "
                        "decoder: 4 blocks as wide as the encoder")
    parser.add_argument("--mvmae-patch", type=int, default=16, help="the MAE's patch side")
    parser.add_argument("--mvmae-mask", type=float, default=0.93, help="the MAE's mask ratio")
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    args = parser.parse_args(argv)

    from medaug.data.phantom import make_phantom

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = tempfile.TemporaryDirectory(prefix="bench_pretrain_")
    work = Path(tmp.name)
    data_dir = Path(args.data) if args.data else work / "phantom"
    print(f"phantom: {args.patients} patients at {args.size} px in {data_dir}", file=sys.stderr)
    make_phantom(data_dir, args.patients, image_size=args.size, progress=False)
    figures: dict = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "image_size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "goal": GOAL,
        "ratios": {},
    }
    if "moco" in args.methods:
        figures.update(bench_moco(args, data_dir, work, device))
    if "mvmae" in args.methods:
        figures["mvmae"] = bench_mvmae(args, data_dir, work, device)
        figures["ratios"]["mvmae"] = figures["mvmae"]["ratio"]
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
    tmp.cleanup()
    return 0


def _data_config(args: argparse.Namespace, data_dir: Path, work: Path, device: torch.device,
                 **sections: dict):
    from medaug.config import build_config

    pretrain = {"batch_size": args.batch, "use_gpu": device.type == "cuda",
                **sections.pop("pretrain", {})}
    return build_config({
        "data": {"csv": str(data_dir / "train.csv"), "image_size": args.size,
                 "cache_dir": str(work / "cache")},
        "pretrain": pretrain,
        **sections,
    })


def timed_pair(bare, real, n: int, warmup: int, device: torch.device
               ) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of each of n bare and n real steps (``step(i)``), interleaved step by step so
    that a change in the machine's load hits both alike."""
    for i in range(warmup):
        bare(i)
        real(i)
    times = np.zeros((2, n))
    for i in range(n):
        for j, step in enumerate((bare, real)):
            _sync(device)
            t0 = time.perf_counter()
            step(warmup + i)
            _sync(device)
            times[j, i] = time.perf_counter() - t0
    return times[0], times[1]


def step_figures(batch: int, bare_times: np.ndarray, real_times: np.ndarray) -> dict:
    """Images per second of the bare and real steps (from the fastest step of each kind:
    other work on the machine only ever adds time), their ratio, and the ratio of the means."""
    bare_ips, real_ips = batch / bare_times.min(), batch / real_times.min()
    return {
        "bare_images_per_s": bare_ips,
        "real_images_per_s": real_ips,
        "ratio": real_ips / bare_ips,
        "ratio_of_means": bare_times.mean() / real_times.mean(),
        "bare_step_s": bare_times.tolist(),
        "real_step_s": real_times.tolist(),
    }


def bench_moco(args: argparse.Namespace, data_dir: Path, work: Path, device: torch.device
               ) -> dict:
    """MoCo's real step per negative strategy against the bare encoder loop."""
    from medaug.engine.data import pair_index, prepare_data
    from medaug.engine.pretrain import train_step
    from medaug.engine.schedule import build_optimizer
    from medaug.methods import get_method
    from medaug.moco.negatives import list_strategies
    from medaug.pairs import PairSampler

    strategies = args.strategies or list_strategies()
    cfg = _data_config(args, data_dir, work, device, moco={"queue_size": args.queue},
                       pretrain={"arch": args.arch})
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

        bare_times, real_times = timed_pair(lambda i: bare_step(), real_step, args.steps,
                                            args.warmup, device)
        # Other work on the machine only ever adds time, so the fastest step of each kind is
        # the steadiest estimate of its cost; the means are kept beside it.
        t_bare, t_real = bare_times.min(), real_times.min()
        extra_ms = overhead_ms(queue, strategy)
        results[strategy] = {
            **step_figures(args.batch, bare_times, real_times),
            "bare_gflops": flops_per_step / t_bare / 1e9,
            "real_gflops": flops_per_step / t_real / 1e9,
            "overhead_ms": extra_ms,
            "overhead_share": sum(extra_ms.values()) / 1e3 / t_real,
        }
        r = results[strategy]
        print(f"{strategy:>14}: bare {r['bare_images_per_s']:6.1f} img/s  "
              f"real {r['real_images_per_s']:6.1f} img/s  "
              f"ratio {r['ratio']:.3f} {'ok' if r['ratio'] >= GOAL else 'BELOW GOAL'}  "
              f"real {r['real_gflops']:.1f} GFLOP/s | data {extra_ms['data']:.1f} ms, "
              f"loss {extra_ms['loss']:.1f} ms per step = {r['overhead_share']:.1%} of the step")

    peak = max(peak, matmul_gflops(device))
    best_real = max(r["real_gflops"] for r in results.values())
    print(f"matmul fp32: {peak:.1f} GFLOP/s; the real step reaches {best_real:.1f} GFLOP/s = "
          f"{best_real / peak:.0%} of it")

    return {
        "arch": args.arch,
        "queue": args.queue,
        "matmul_gflops": peak,
        "real_gflops_best": best_real,
        "utilisation": best_real / peak,
        "step_gflop": flops_per_step / 1e9,
        "ratios": {s: r["ratio"] for s, r in results.items()},
        "strategies": results,
    }


def bench_mvmae(args: argparse.Namespace, data_dir: Path, work: Path, device: torch.device
                ) -> dict:
    """The multi-view MAE's real step against a bare loop over the same modules, and the
    encoder's forward time at mask ratio 0.93 against 0."""
    from medaug.engine.data import pair_index, prepare_data
    from medaug.engine.pretrain import train_step
    from medaug.engine.schedule import build_optimizer
    from medaug.methods import get_method
    from medaug.mvmae.config import VIT_SIZES, num_visible
    from medaug.mvmae.losses import patchify
    from medaug.mvmae.masking import random_masks
    from medaug.pairs import PairSampler

    width, _, heads = VIT_SIZES[args.mvmae_vit]
    lr = 1.2e-4 * args.batch / 256  # the reference's scaling
    cfg = _data_config(
        args, data_dir, work, device,
        pretrain={"method": "mvmae", "criterion": "patient_same_study_distinct_lat",
                  "optimizer": "adamw", "lr": lr, "weight_decay": 0.05, "grad_clip": 1.0},
        mvmae={"vit": args.mvmae_vit, "patch_size": args.mvmae_patch,
               "mask_ratio": args.mvmae_mask, "decoder_dim": width, "decoder_depth": 4,
               "decoder_heads": heads},
    )
    p = cfg.pretrain
    data = prepare_data(cfg, work, progress=False)
    index = pair_index(data, cfg)
    if len(index) < args.batch:
        raise SystemExit(f"only {len(index)} anchors: use more --patients")
    torch.manual_seed(0)
    gen = torch.Generator(device=device).manual_seed(0)
    method = get_method("mvmae")(cfg, data, device, gen)
    method.begin_epoch(1, 2)  # the last epoch of two: beta = beta_max, both terms weigh
    method.module.train()
    model = method.model
    optimizer = build_optimizer(p.optimizer, method.param_groups(p.weight_decay), p.lr,
                                p.weight_decay)
    use_amp = p.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    n_views, size, patch = 2 * args.batch, args.size, args.mvmae_patch
    num_patches, visible = model.num_patches, model.visible
    fixed_keep = torch.arange(visible, device=device).expand(n_views, visible)  # 2B x V

    def bare_step(i: int) -> None:
        x = torch.randn(n_views, 1, size, size, device=device)  # 2B x 1 x S x S
        view = torch.randint(0, 3, (n_views,), device=device)  # 2B
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            tokens = model.encoder(x, view, fixed_keep)  # 2B x (1+V) x D
            pred = model.decoder(tokens, fixed_keep, view)  # 2B x L x p*p
        loss = F.mse_loss(pred.float(), patchify(x, patch))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    order = np.random.default_rng(0).permutation(len(index))
    partners = PairSampler(index, seed=0).sample(0)
    anchor_rows = data.train[index.anchors[order]]
    partner_rows = data.train[partners[order]]
    n_batches = len(order) // args.batch

    def real_step(i: int) -> None:
        sl = slice((i % n_batches) * args.batch, (i % n_batches + 1) * args.batch)
        train_step(method, method.module, optimizer, scaler, anchor_rows[sl], partner_rows[sl],
                   p.grad_clip)

    bare_times, real_times = timed_pair(bare_step, real_step, args.steps, args.warmup, device)

    # The encoder alone on one batch: 93% of the patches hidden against none, interleaved.
    x = torch.randn(n_views, 1, size, size, device=device)
    view = torch.randint(0, 3, (n_views,), device=device)
    v93 = num_visible(num_patches, 0.93)
    keep, _ = random_masks(n_views, num_patches, v93, gen)
    encode = {"mask_0.93": lambda: model.encoder(x, view, keep), "mask_0": lambda: model.encoder(x, view)}
    best = {k: float("inf") for k in encode}
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        for rep in range(args.warmup + max(args.steps, 3)):
            for name, run in encode.items():
                _sync(device)
                t0 = time.perf_counter()
                run()
                _sync(device)
                if rep >= args.warmup:
                    best[name] = min(best[name], time.perf_counter() - t0)
    out = {
        "vit": args.mvmae_vit,
        "patch": patch,
        "mask_ratio": args.mvmae_mask,
        "patches": num_patches,
        "visible": visible,
        **step_figures(args.batch, bare_times, real_times),
        "encoder_s_mask_0.93": best["mask_0.93"],
        "encoder_s_mask_0": best["mask_0"],
        "encoder_time_ratio": best["mask_0.93"] / best["mask_0"],
        "token_ratio": (1 + v93) / (1 + num_patches),
    }
    print(f"{'mvmae':>14}: bare {out['bare_images_per_s']:6.1f} img/s  "
          f"real {out['real_images_per_s']:6.1f} img/s  "
          f"ratio {out['ratio']:.3f} {'ok' if out['ratio'] >= GOAL else 'BELOW GOAL'}  "
          f"({args.mvmae_vit}/{patch}, {visible} of {num_patches} patches visible, "
          f"batch {args.batch} pairs)")
    print(f"{'':>14}  encoder forward on {n_views} views: mask 0.93 "
          f"{best['mask_0.93'] * 1e3:.1f} ms, mask 0 {best['mask_0'] * 1e3:.1f} ms, "
          f"time ratio {out['encoder_time_ratio']:.3f} vs token ratio {out['token_ratio']:.3f} "
          f"({1 + v93} of {1 + num_patches} tokens)")
    return out


if __name__ == "__main__":
    sys.exit(main())
