"""End-to-end fine-tuning of one label split on Ray Train workers (Ray 2.5x/2.6x, Train V2).

:func:`run_finetune_ray` runs :func:`medaug.eval.finetune.finetune` on
``eval.e2e_num_workers`` workers of a ``TorchTrainer``; with more than one worker the model
is wrapped in DDP by ``ray.train.torch.prepare_model`` and every global batch is split
across the workers.  Each worker rebuilds the encoder (the checkpoint, or the seeded
baseline) and reopens the image cache itself, with the images' view codes for an encoder
that reads them (``takes_view``), so only row positions and labels travel.
Resume lives in ``state.pt`` of the split's folder (rewritten every epoch by rank 0): a
restarted worker group (``eval.e2e_max_failures``) or a rerun continues from it.  On several
nodes the output folder must be shared storage, as for pretraining.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from medaug.config import Config, build_config, config_to_dict
from medaug.tune.pretrain_trainer import worker_error

RAY_DIR = "ray"
RESULT_FILE = "result.npz"


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every worker runs: rebuild encoder and images, fine-tune, rank 0 saves scores."""
    import ray.train
    import ray.train.torch
    import torch

    from medaug.engine.data import prepare_data
    from medaug.eval.evaluate import eval_backbone
    from medaug.eval.features import module_hash
    from medaug.eval.finetune import FinetuneData, FinetuneSettings, finetune

    cfg = build_config(config["cfg"])
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    backbone, dim, _ = eval_backbone(cfg, config["checkpoint"], config["baseline"])
    if module_hash(backbone) != config["encoder_hash"]:
        raise RuntimeError("a fine-tuning worker rebuilt a different encoder than the driver's")
    data = prepare_data(cfg, config["data_dir"], progress=False)
    fdata = FinetuneData(images=data.cache, views=data.view, **config["arrays"])
    settings = FinetuneSettings(**config["settings"])

    def report(metrics: dict[str, Any], _state: Path | None) -> None:
        # Metrics only: resume comes from the state file, which rank 0 rewrites every epoch.
        ray.train.report({k: v for k, v in metrics.items() if not isinstance(v, list)})

    wrap = ray.train.torch.prepare_model if world > 1 else None
    out = finetune(backbone, dim, fdata, settings, state_path=config["state_path"],
                   device=ray.train.torch.get_device(), rank=rank, world_size=world,
                   wrap_model=wrap, report=report, progress=config["progress"])
    if rank == 0:
        path = Path(config["result_path"])
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, test_scores=out["test_scores"], best_epoch=out["best_epoch"],
                     select_auc=np.array([np.nan if a is None else a for a in out["select_auc"]]))
        os.replace(tmp, path)


def run_finetune_ray(
    cfg: Config,
    out_dir: str | Path,
    split: int,
    checkpoint: str | Path | None,
    baseline: str | None,
    data: Any,
    settings: Any,
    state_path: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune one split with ``cfg.eval.e2e_num_workers`` Ray Train workers.

    Args:
        cfg: resolved config (``eval.e2e_*``, and ``data`` to reopen the image cache).
        out_dir: the evaluation folder (the image cache's default home; Ray's state goes to
            ``out_dir/ray``).
        split: split number (names the Ray run).
        checkpoint, baseline: the encoder, as for :func:`medaug.eval.evaluate.evaluate`.
        data: :class:`medaug.eval.finetune.FinetuneData` (its ``images`` stay here; workers
            reopen the cache).
        settings: :class:`medaug.eval.finetune.FinetuneSettings`.
        state_path: the split's resume file.

    Returns:
        {"test_scores": N_test x O, "best_epoch": int, "select_auc": list (None = undefined)}.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from medaug.eval.evaluate import eval_backbone
    from medaug.eval.features import module_hash

    e = cfg.eval
    out_dir = Path(out_dir).resolve()
    state_path = Path(state_path).resolve()
    state_path.parent.mkdir(parents=True, exist_ok=True)
    result_path = state_path.parent / RESULT_FILE
    result_path.unlink(missing_ok=True)
    backbone, _, _ = eval_backbone(cfg, checkpoint, baseline)
    # Rows and labels only: each worker reopens the images and their view codes.
    arrays = {k: np.asarray(v) for k, v in asdict(replace(data, images=None, views=None)).items()
              if k not in ("images", "views")}
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, int(e.e2e_num_workers * e.e2e_cpus_per_worker)),
                 include_dashboard=False, log_to_driver=progress)
        started = True
    resources: dict[str, float] = {"CPU": e.e2e_cpus_per_worker}
    if e.e2e_use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "cfg": config_to_dict(cfg),
            "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
            "baseline": baseline,
            "encoder_hash": module_hash(backbone),
            "data_dir": str(out_dir),
            "arrays": arrays,
            "settings": asdict(settings),
            "state_path": str(state_path),
            "result_path": str(result_path),
            "progress": progress,
            "threads": max(1, int(e.e2e_cpus_per_worker)),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=e.e2e_num_workers, use_gpu=e.e2e_use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=f"e2e-split{split}",
            storage_path=str(out_dir / RAY_DIR),
            failure_config=ray.train.FailureConfig(max_failures=e.e2e_max_failures),
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        user = worker_error(err)
        if user is not None:
            raise user from None
        raise
    finally:
        if started:
            ray.shutdown()
    if not result_path.exists():
        raise RuntimeError(f"fine-tuning split {split} finished without writing {result_path}")
    with np.load(result_path) as z:
        select = [None if not np.isfinite(a) else float(a) for a in z["select_auc"]]
        return {"test_scores": z["test_scores"], "best_epoch": int(z["best_epoch"]),
                "select_auc": select}

