"""The pretraining loop, method-agnostic, as a plain function.

One epoch: the pair sampler draws one partner x' for every anchor x; the anchors are taken
in a seeded permutation, a global batch at a time (each worker its own slice of it); the
registered method (:mod:`medaug.methods`: MoCo v2, the multi-view MAE, ...) computes the
loss of one batch of (anchor rows, partner rows); this loop owns the schedule, the
optimiser, mixed precision, gradient clipping, the distributed set-up and checkpoints with
exact resume.  Every ``knn_every`` epochs a monitor given by the caller (the evaluation's
kNN monitor, ``medaug.eval.monitor.KnnMonitor``) scores the method's evaluated backbone on
the selection set (never the test set, see ``medaug.data.splits``), and the best epoch is
kept.

No Ray here: :func:`pretrain` takes a ``report(metrics, checkpoint_dir)`` callable, and runs
data-parallel whenever ``torch.distributed`` is initialised (DDP on the method's module).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from medaug.config import Config, config_to_dict, flatten, write_config
from medaug.engine import checkpoint as ckpt
from medaug.engine.data import PreparedData, pair_index, prepare_data, pretraining_rows
from medaug.engine.schedule import (
    build_optimizer,
    check_optimizer,
    check_schedule,
    lr_schedule,
    set_lr,
)
from medaug.errors import MedaugError
from medaug.files import write_json_atomic, write_text_atomic
from medaug.methods import Method

Report = Callable[[dict, "Path | None"], None]
# (data, cfg, device, partitions) -> monitor: monitor(backbone) -> float | None
MonitorFactory = Callable[..., Any]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
EVENTS_FILE = "events.jsonl"

# Settings that may change between a run and its resumption without breaking exactness of
# what was already trained (a longer run, other monitor or checkpoint cadence).
_RESUMABLE_CHANGES = (
    "pretrain.epochs", "pretrain.knn_every", "pretrain.knn_bank", "pretrain.knn_queries",
    "pretrain.knn_k", "pretrain.checkpoint_every", "pretrain.keep_checkpoints",
    "pretrain.max_failures", "pretrain.num_workers", "pretrain.use_gpu", "output",
    "data.cache_dir", "data.num_loader_workers",
)


def check_pretrain(cfg: Config) -> None:
    """Everything about a pretraining job that can be checked before any work starts.

    ``medaug.config.check_config`` already covered the registries it knows (criteria,
    negative strategies, crop scale, queue divisibility, weights file); this adds the
    engine's own registries and limits, the backbone name and the metadata CSV.

    Raises:
        MedaugError: naming the key and the valid choices.
    """
    from medaug.config import check_config
    from medaug.models.backbones import check_arch

    check_config(cfg)
    p = cfg.pretrain
    check_arch(p.arch, cfg.data.image_size)
    check_optimizer(p.optimizer)
    check_schedule(p.lr_schedule)
    for key, value, low in (
        ("checkpoint_every", p.checkpoint_every, 1),
        ("keep_checkpoints", p.keep_checkpoints, 1),
        ("knn_every", p.knn_every, 0),
        ("knn_k", p.knn_k, 1),
        ("knn_bank", p.knn_bank, 1),
        ("knn_queries", p.knn_queries, 1),
        ("max_failures", p.max_failures, -1),
    ):
        if value < low:
            raise MedaugError(f"pretrain.{key} must be at least {low}, got {value}")
    if p.max_steps_per_epoch is not None and p.max_steps_per_epoch < 1:
        raise MedaugError(
            f"pretrain.max_steps_per_epoch must be at least 1 or none, got {p.max_steps_per_epoch}"
        )
    if p.lr <= 0 or p.weight_decay < 0:
        raise MedaugError("pretrain.lr must be positive and pretrain.weight_decay >= 0")
    if not 0.0 <= p.hflip <= 1.0:
        raise MedaugError(f"pretrain.hflip is a probability in [0, 1], got {p.hflip}")
    if p.rotation < 0:
        raise MedaugError(f"pretrain.rotation must be >= 0 degrees, got {p.rotation}")
    if not cfg.data.csv:
        raise MedaugError("data.csv is not set: give the dataset's metadata CSV")
    if not Path(cfg.data.csv).exists():
        raise MedaugError(f"data.csv {cfg.data.csv} does not exist")


# ---------------------------------------------------------------------------------------------
# Small helpers.


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(use_gpu: bool) -> torch.device:
    """CUDA (this worker's GPU) when asked for and available, else CPU."""
    if use_gpu and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (so streams of different purposes never coincide)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _say(line: str) -> None:
    """One line on stderr, written directly (Ray Train workers patch ``print``, which would
    log the line twice)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _as_number(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


# ---------------------------------------------------------------------------------------------
# One optimisation step.


def train_step(method: Method, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, rows_a: np.ndarray, rows_b: np.ndarray,
               grad_clip: float | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """One step of any method: its loss on (anchor rows, partner rows), backward through the
    AMP scaler, optional clipping of the gradient's global norm, the optimiser step, and the
    method's after-step (MoCo's enqueue).

    Returns:
        the detached loss and the method's statistics.
    """
    optimizer.zero_grad(set_to_none=True)
    loss, stats = method.step(net, rows_a, rows_b)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
        torch.nn.utils.clip_grad_norm_(method.module.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    method.after_step()
    return loss.detach(), stats


# ---------------------------------------------------------------------------------------------
# Run folder bookkeeping (rank 0 only).


def _read_metrics(out_dir: Path) -> list[dict]:
    path = out_dir / METRICS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                break
    return out


def _write_metrics(out_dir: Path, records: list[dict]) -> None:
    write_text_atomic(out_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


def _append_metrics(out_dir: Path, record: dict) -> None:
    with open(out_dir / METRICS_FILE, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def clear_run(out_dir: str | Path) -> None:
    """Forget a previous run in ``out_dir``: checkpoints, metrics, summary, events."""
    import shutil

    out_dir = Path(out_dir)
    shutil.rmtree(ckpt.checkpoints_dir(out_dir), ignore_errors=True)
    for name in (METRICS_FILE, SUMMARY_FILE, EVENTS_FILE, ckpt.BEST_JSON):
        (out_dir / name).unlink(missing_ok=True)


def _log_event(out_dir: Path, event: str, **fields: Any) -> None:
    """Append one line to ``events.jsonl`` (starts, resumptions, ends of the run)."""
    record = {"time": time.time(), "event": event, **fields}
    with open(out_dir / EVENTS_FILE, "a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


def _resume_source(
    out_dir: Path, resume: bool, resume_from: str | Path | None, epoch: int | None = None
) -> Path | None:
    """The newest of ``resume_from`` and the run folder's latest checkpoint (or the one of
    them taken after ``epoch`` epochs)."""
    if not resume or (epoch is not None and epoch < 0):
        return None
    candidates = [Path(resume_from)] if resume_from is not None else []
    latest = ckpt.latest_checkpoint(out_dir)
    if latest is not None:
        candidates.append(latest)
    candidates = [c for c in candidates if (c / ckpt.STATE).exists()]
    if epoch is not None:
        candidates = [c for c in candidates if ckpt.checkpoint_epoch(c) == epoch]
    if not candidates:
        return None
    return max(candidates, key=ckpt.checkpoint_epoch)


def _warn_config_changes(saved: dict, cfg: Config, source: Path) -> None:
    old, new = flatten(saved), flatten(config_to_dict(cfg))
    changed = sorted(
        k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES
    )
    if changed:
        _say(
            f"medaug pretrain: warning: resuming from {source} with changed settings: "
            + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        )


# ---------------------------------------------------------------------------------------------


def pretrain(
    cfg: Config,
    out_dir: str | Path,
    report: Report | None = None,
    resume: bool = True,
    *,
    resume_from: str | Path | None = None,
    progress: bool = True,
    monitor: MonitorFactory | None = None,
) -> dict:
    """Pretrain the method ``cfg.pretrain.method`` on ``cfg.data`` with the pairs of ``cfg``.

    Args:
        cfg: the resolved config (``pretrain`` section; ``data`` for the images and the
            monitor's target; ``seed``).
        out_dir: run folder: checkpoints, ``metrics.jsonl``, ``summary.json``, ``best.json``,
            ``config.yaml`` (written by rank 0).
        report: called on every worker after every epoch with the epoch's metrics (identical
            on all workers) and the checkpoint folder written this epoch (rank 0, on
            checkpoint epochs) or None.  Metrics: epoch (completed epochs), loss, lr,
            images_per_s, n_fallback_pairs (anchors of the epoch paired with themselves
            because S_c(x) was empty), n_neg_fallback, n_neg_short, n_neg_own (queue keys of
            the query's own image, summed over the epoch's queries: no negatives unless
            moco.keep_own_image_negatives), n_neg_own_queries (from the loss), knn_auc
            (None on epochs without monitor), best_epoch, best_knn_auc.
        resume: continue from the newest checkpoint of ``resume_from`` and ``out_dir``; with
            False, a previous run in ``out_dir`` is cleared and training starts over.
        resume_from: a checkpoint folder to continue from (e.g. the one Ray Train restored).
        progress: progress bar and one line per epoch on stderr (rank 0).
        monitor: builds the checkpoint monitor, ``monitor(data, cfg, device, parts)`` -> a
            callable scoring a backbone (higher is better; None when it cannot), with
            ``problem`` (why it cannot score, or None) and ``sets`` (what it scores on); the
            evaluation's ``medaug.eval.monitor.KnnMonitor``.  None: no monitor, the last
            epoch is the best one.

    Returns:
        the summary (also written to ``summary.json``): best_epoch, best_knn_auc,
        best_checkpoint, latest_checkpoint, epochs, final_loss, history (metrics per epoch),
        selected_by ("kNN monitor" or "last epoch"), selection (name, source, rows, patients
        and kNN query / bank counts of the set that selected; None without the monitor),
        test (the held-out set, which pretraining never reads), pretraining_images.

    Raises:
        MedaugError: bad settings, missing data, or too few anchors for one global batch.
    """
    from medaug.engine.data import partitions_for
    from medaug.methods import get_method
    from medaug.pairs import PairSampler

    check_pretrain(cfg)
    p = cfg.pretrain
    out_dir = Path(out_dir)
    rank, world = _dist_info()
    distributed = world > 1
    device = pick_device(p.use_gpu)
    use_amp = bool(p.amp and device.type == "cuda")  # the GradScaler's switch
    show = progress and rank == 0

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            clear_run(out_dir)
    if distributed:
        dist.barrier()  # nobody reads the folder while rank 0 clears it

    # Identical initial weights on every worker (DDP would broadcast them anyway).
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 (the global generator others may use)
    torch.manual_seed(cfg.seed)

    data = prepare_data(cfg, out_dir, progress=show)
    # The evaluation's partitions: pretraining never learns from a held-out test row, and the
    # monitor scores on the selection set.
    parts = partitions_for(data.table, cfg)
    train_rows = pretraining_rows(data, parts)
    index = pair_index(data, cfg, train_rows)
    sampler = PairSampler(index, seed=cfg.seed)
    global_batch = p.batch_size * world
    steps = len(index) // global_batch
    if steps == 0:
        raise MedaugError(
            f"{len(index)} training anchors are fewer than one global batch ({p.batch_size} x "
            f"{world} workers): lower pretrain.batch_size"
        )
    if p.max_steps_per_epoch is not None:
        steps = min(steps, p.max_steps_per_epoch)
    lrs = lr_schedule(p.lr_schedule, p.lr, p.epochs, steps, p.lr_milestones, p.lr_gamma,
                      warmup_epochs=p.warmup_epochs)

    # One stream for the method's randomness (augmentations, key shuffles, masks, loss
    # sampling); reseeded every epoch from (seed, epoch, rank), so an epoch's draws never
    # depend on the epochs before it.
    gen = torch.Generator(device=device)
    method = get_method(p.method)(cfg, data, device, gen)
    model = method.module
    optimizer = build_optimizer(
        p.optimizer, method.param_groups(p.weight_decay), p.lr, p.weight_decay, p.sgd_momentum
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    monitor = monitor(data, cfg, device, parts) if (monitor and p.knn_every) else None
    if monitor is not None and monitor.problem and show:
        _say(f"medaug pretrain: warning: kNN monitor off: {monitor.problem}")

    start_epoch = 0
    best: dict[str, Any] = {"epoch": None, "knn_auc": None}
    source = _resume_source(out_dir, resume, resume_from)
    if distributed:
        # Rank 0's choice of epoch holds for all, so every worker continues from the same
        # state (each reads its own copy of it: Ray's restored folder or the run folder).
        epoch = ckpt.checkpoint_epoch(source) if source is not None else -1
        chosen = torch.tensor([epoch], dtype=torch.int64, device=device)
        dist.broadcast(chosen, src=0)
        if int(chosen) != epoch:
            source = _resume_source(out_dir, resume, resume_from, epoch=int(chosen))
            if int(chosen) >= 0 and source is None:
                raise RuntimeError(
                    f"worker {rank} cannot see the epoch-{int(chosen)} checkpoint that worker 0 "
                    f"resumes from: {out_dir} must be on storage shared by all workers"
                )
    if source is not None:
        state = ckpt.load_state(source, map_location="cpu")
        if state.get("method") != method.name:
            raise MedaugError(
                f"checkpoint {source} was written by "
                f"{'method ' + repr(state['method']) if 'method' in state else 'an older medaug'}"
                f", not by pretraining method {method.name!r}: it can be evaluated but not "
                "resumed; start the run again in a new output folder"
            )
        _warn_config_changes(state["config"], cfg, source)
        model.load_state_dict(state["model"])
        method.load_extra_state(state["extra"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng(state["rng"], {"augment": gen})
        start_epoch = int(state["epoch"])
        best = dict(state["best"])
        if show:
            _say(f"medaug pretrain: resuming from {source} (epoch {start_epoch})")

    history: list[dict] = []
    if rank == 0:
        _log_event(out_dir, "resume" if source is not None else "start", epoch=start_epoch,
                   source=source, world_size=world, device=str(device))
        write_config(cfg, out_dir / CONFIG_FILE)
        history = [m for m in _read_metrics(out_dir) if int(m.get("epoch", 0)) <= start_epoch]
        if source is not None and (not history or int(history[-1]["epoch"]) < start_epoch):
            # Killed between writing the checkpoint and appending its metrics line: the
            # checkpoint holds that epoch's metrics.
            history.append(dict(state["metrics"]))
        _write_metrics(out_dir, history)

    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    latest_dir: Path | None = ckpt.latest_checkpoint(out_dir) if rank == 0 else None
    metrics: dict[str, Any] = {}

    for epoch in range(start_epoch, p.epochs):
        model.train()
        gen.manual_seed(mixed_seed(cfg.seed, epoch, rank, 0x617567))
        method.begin_epoch(epoch, p.epochs)
        order = np.random.default_rng(mixed_seed(cfg.seed, epoch, 0x6F7264)).permutation(len(index))
        partners = sampler.sample(epoch)  # A train positions, aligned with index.anchors
        used = order[: steps * global_batch]  # anchors (index positions) of this epoch
        anchor_rows = train_rows[index.anchors[used]]  # steps*G table rows
        partner_rows = train_rows[partners[used]]  # steps*G table rows
        n_fallback = int(index.fallback[used].sum())

        totals: dict[str, torch.Tensor] = {}  # loss and the method's stats, summed over steps
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{p.epochs}", file=sys.stderr,
                   disable=not show, leave=False, mininterval=2.0)
        t0 = time.perf_counter()
        for step in range(steps):
            global_step = epoch * steps + step
            set_lr(optimizer, float(lrs[global_step]))
            mine = slice(step * global_batch + rank * p.batch_size,
                         step * global_batch + (rank + 1) * p.batch_size)
            rows_a, rows_b = anchor_rows[mine], partner_rows[mine]  # B, B
            loss, stats = train_step(method, net, optimizer, scaler, rows_a, rows_b, p.grad_clip)

            # Accumulated on the device: no host synchronisation per step.
            for name, value in (("loss", loss), *stats.items()):
                value = torch.as_tensor(value, dtype=torch.float64, device=device).detach()
                totals[name] = totals[name] + value if name in totals else value
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        elapsed = time.perf_counter() - t0
        bar.close()
        names = sorted(totals)  # the same on every worker: the method returns fixed names
        summed = torch.stack([totals[n] for n in names])
        if distributed:
            dist.all_reduce(summed)  # sums over workers
            # The slowest worker sets the pace (and every worker reports the same figure).
            slowest = torch.tensor([elapsed], dtype=torch.float64, device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            elapsed = float(slowest.item())
        # Counts ("n_*") are summed over steps and workers; loss and other stats averaged.
        epoch_stats = {
            n: float(v) if n.startswith("n_") else float(v) / max(steps * world, 1)
            for n, v in zip(names, summed.cpu().tolist(), strict=True)
        }

        completed = epoch + 1
        knn = None
        if monitor is not None and (completed % p.knn_every == 0 or completed == p.epochs):
            # On the device: NCCL only moves CUDA tensors.
            value = torch.tensor([math.nan], dtype=torch.float64, device=device)
            if rank == 0:
                auc = monitor(method.eval_backbone())
                value[0] = math.nan if auc is None else auc
            if distributed:
                dist.broadcast(value, src=0)  # all workers report the same metrics
            knn = _as_number(value[0].item())
        improved = knn is not None and (best["knn_auc"] is None or knn > best["knn_auc"])
        if improved:
            best = {"epoch": completed, "knn_auc": knn}

        metrics = {
            "epoch": completed,
            "loss": epoch_stats.pop("loss"),
            "lr": float(lrs[epoch * steps + steps - 1]),
            "images_per_s": steps * global_batch / max(elapsed, 1e-9),
            "n_fallback_pairs": n_fallback,
            **{n: int(v) if n.startswith("n_") else v for n, v in epoch_stats.items()},
            "knn_auc": knn,
            "best_epoch": best["epoch"],
            "best_knn_auc": best["knn_auc"],
        }
        if not math.isfinite(metrics["loss"]):
            raise MedaugError(
                f"the loss became {metrics['loss']} in epoch {completed}: lower pretrain.lr"
            )

        written: Path | None = None
        if rank == 0:
            save_now = completed % p.checkpoint_every == 0 or completed == p.epochs
            if save_now or improved:
                state = {
                    "epoch": completed,
                    "global_step": completed * steps,
                    "method": method.name,
                    "model": model.state_dict(),
                    "extra": method.extra_state(),
                    # The evaluated encoder under one key, whatever the method's prefixes.
                    "backbone": method.eval_backbone().state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": ckpt.capture_rng({"augment": gen}),
                    "best": best,
                    "config": config_to_dict(cfg),
                    "metrics": metrics,
                    "world_size": world,
                }
                meta = {"epoch": completed, **{k: v for k, v in metrics.items() if k != "epoch"}}
                if save_now:
                    written = ckpt.write_checkpoint(out_dir, completed, state, meta,
                                                    keep=p.keep_checkpoints)
                    latest_dir = written
                if improved:
                    ckpt.write_best(out_dir, state, meta, link_from=written)
            history.append(metrics)
            _append_metrics(out_dir, metrics)
            if show:
                knn_text = "-" if knn is None else f"{knn:.4f}"
                _say(
                    f"epoch {completed}/{p.epochs}  loss {metrics['loss']:.4f}  "
                    f"lr {metrics['lr']:.2e}  {metrics['images_per_s']:.1f} img/s  "
                    f"knn_auc {knn_text}  fallback pairs {n_fallback}  "
                    + "  ".join(f"{n} {_fmt(v)}" for n, v in epoch_stats.items()),
                )
        if report is not None:
            report(dict(metrics), written)

    summary = _summary(out_dir, best, latest_dir, history, p.epochs)
    summary.update(_sets_record(monitor, parts, data, train_rows, summary))
    if rank == 0:
        _log_event(out_dir, "end", epoch=p.epochs, best_epoch=summary["best_epoch"])
        write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return summary


def _summary(
    out_dir: Path, best: dict, latest: Path | None, history: list[dict], epochs: int
) -> dict:
    best_dir = ckpt.checkpoints_dir(out_dir) / ckpt.BEST
    has_best = (best_dir / ckpt.STATE).exists() and best["epoch"] is not None
    last = history[-1] if history else {}
    return {
        "out_dir": str(out_dir),
        "epochs": epochs,
        "best_epoch": best["epoch"] if has_best else last.get("epoch"),
        "best_knn_auc": best["knn_auc"] if has_best else None,
        "best_checkpoint": str(best_dir if has_best else latest) if (has_best or latest) else None,
        "latest_checkpoint": str(latest) if latest is not None else None,
        "final_loss": last.get("loss"),
        "history": history,
    }


def _sets_record(monitor: Any, parts, data: PreparedData, train_rows: np.ndarray,
                 summary: dict) -> dict:
    """Which set picked the checkpoint, which set is held out for testing, and how many
    images pretraining learned from."""
    sets = monitor.sets if monitor is not None else parts.describe(data.table)
    by_monitor = summary["best_knn_auc"] is not None
    return {
        "selected_by": "kNN monitor" if by_monitor else "last epoch",
        "selection": sets["selection"] if by_monitor else None,
        "test": sets["test"],
        "pretraining_images": {"rows": int(len(train_rows)),
                               "patients": int(len(np.unique(data.patient[train_rows])))},
    }
