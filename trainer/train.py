"""hagview-train: k-fold training of HAG+GR models from one YAML config.

    hagview-train --config configs/train/synthetic_small.yaml --out runs/demo
    hagview-train --config FILE --fold 2 --set optim.main.lr=1e-4 --set train.epochs=5
    hagview-train --out runs/demo --resume             # continue from each fold's last.pt
    torchrun --nproc_per_node 4 -m trainer.train --config FILE --out runs/x   # several GPUs

The run directory (design.md "Training runs"):
    RUN/config.yaml  RUN/summary.json  RUN/fold-K/{metrics.csv,metrics.json,report.html,best.pt,last.pt}

Read top to bottom: `main` -> `run_training` (folds) -> `train_fold` (epochs) ->
`train_one_epoch` (batches, each one `step.step(inputs, targets)`: the Gradient Routing step
of `trainer.routing` or `PlainStep` when routing is off).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import random
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import distributed as dist_util
from pipeline.cli_util import run_cli
from .config import (OptimizerConfig, ScheduleConfig, TrainConfig, config_to_dict, config_to_yaml,
                     load_config)
from .distributed import DistContext
from pipeline.errors import ConfigError, HagviewError
from pipeline.fsutil import check_writable_dir, write_json_atomic, write_text_atomic
from .models import read_checkpoint, save_checkpoint
from pipeline.progress import Progress, format_seconds
from .report import write_fold_report
from .tasks import Task, build_task

log = logging.getLogger("hagview.train")

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


# =============================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hagview-train",
        description="Train a HAG+GR sizer (or detector) with k-fold cross-validation from a YAML config.")
    p.add_argument("--config", help="training config (YAML); optional with --resume (RUN/config.yaml)")
    p.add_argument("--fold", type=int, default=None, help="train only this fold (0-based); default: every fold")
    p.add_argument("--out", help="run directory (default: output.dir of the config, else runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.main.lr=1e-4 (repeatable; YAML values)")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing run directory from each fold's last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress lines (epoch summaries only)")
    return p


@run_cli("hagview-train")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_path = args.config
    if config_path is None:
        if not (args.resume and args.out):
            raise ConfigError("--config is required (or --resume --out RUN to continue a run)")
        config_path = Path(args.out) / CONFIG_FILE
        if not config_path.is_file():
            raise ConfigError(f"{config_path}: not found; pass --config to resume this directory")
    cfg = load_config(config_path, args.overrides)
    out_dir = Path(args.out or cfg.output.dir or Path("runs") / cfg.name)
    folds = None if args.fold is None else [args.fold]
    summary = run_training(cfg, out_dir, folds=folds, resume=args.resume, show_progress=not args.quiet)
    return 0 if summary is not None else 1


# =============================================================================== a run (folds)
def run_training(cfg: TrainConfig, out_dir: str | os.PathLike, *, folds: list[int] | None = None,
                 resume: bool = False, show_progress: bool = True) -> dict:
    """Train every requested fold into `out_dir`; returns the summary written to summary.json."""
    out_dir = Path(out_dir)
    ctx = dist_util.init_distributed(_device_type(cfg.train.device))
    if not ctx.is_main:   # one voice: the other replicas only report problems
        logging.getLogger("hagview").setLevel(logging.WARNING)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    try:
        device = select_device(cfg.train.device, ctx)
        task = build_task(cfg)
        task.show_progress = show_progress and ctx.is_main
        task.build_model()   # a bad model setting fails here, before data is read or anything written
        all_folds = task.folds()
        if folds is None and cfg.data.fold is not None:
            folds = [cfg.data.fold]
        for k in folds or []:
            if k not in all_folds:
                raise ConfigError(f"--fold {k}: not a fold of this data (folds: {all_folds[0]}..{all_folds[-1]})")
        folds = folds or all_folds
        if ctx.is_main:
            prepare_run_dir(out_dir, cfg, resume)
        dist_util.barrier(ctx)
        summary = read_summary(out_dir) if resume else None
        summary = summary or new_summary(cfg, task)
        for fold in folds:
            fold_dir = out_dir / f"fold-{fold}"
            done = summary["folds"].get(str(fold), {})
            if resume and done.get("completed") and done.get("epochs_done", 0) >= cfg.train.epochs:
                log.info("fold %d: already complete (%d epochs), skipped", fold, done["epochs_done"])
                continue
            result = train_fold(cfg, task, fold, fold_dir, ctx, device,
                                resume=resume, show_progress=show_progress and ctx.is_main)
            summary["folds"][str(fold)] = result
            if ctx.is_main:
                finish_summary(summary, task)
                write_json_atomic(out_dir / SUMMARY_FILE, summary)
        dist_util.barrier(ctx)
        return summary
    finally:
        dist_util.shutdown(ctx)


def prepare_run_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    """Create the run directory; never overwrite an earlier run unless asked to resume it."""
    if (out_dir / CONFIG_FILE).exists() and not resume:
        raise ConfigError(f"{out_dir}: already holds a run; pass --resume to continue it "
                          f"or choose another --out")
    check_writable_dir(out_dir)
    write_text_atomic(out_dir / CONFIG_FILE, config_to_yaml(cfg))


def new_summary(cfg: TrainConfig, task: Task) -> dict:
    return {"name": cfg.name, "task": task.kind, "primary_metric": task.primary_metric,
            "higher_is_better": task.higher_is_better, "folds": {}, "best_fold": None,
            "mean_best": {}, "std_best": {}, "paper_comparable": getattr(task, "paper_comparable", None)}


def read_summary(out_dir: Path) -> dict | None:
    import json
    path = out_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise HagviewError(f"{path}: not valid JSON; move it away to resume") from None


def finish_summary(summary: dict, task: Task) -> None:
    """Best fold by the primary metric; mean and std of every best-epoch metric over folds."""
    folds = {k: v for k, v in summary["folds"].items() if v.get("best_metric") is not None}
    if not folds:
        return
    pick = max if task.higher_is_better else min
    summary["best_fold"] = int(pick(folds, key=lambda k: folds[k]["best_metric"]))
    names = sorted({m for v in folds.values() for m in v.get("best_metrics", {})})
    for prefix, source in (("", "best_metrics"), ("test_", "test_metrics")):
        for name in names:
            values = [v[source][name] for v in folds.values() if name in (v.get(source) or {})]
            values = [x for x in values if x == x]
            if values:
                summary["mean_best"][prefix + name] = statistics.fmean(values)
                summary["std_best"][prefix + name] = statistics.stdev(values) if len(values) > 1 else 0.0


# =============================================================================== one fold (epochs)
@dataclass
class FoldState:
    """What --resume restores besides weights and optimiser state."""
    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float | None = None
    best_metrics: dict = field(default_factory=dict)
    best_confusion: dict = field(default_factory=dict)
    best_agreement: dict = field(default_factory=dict)   # not kept across --resume (report only)


def train_fold(cfg: TrainConfig, task: Task, fold: int, fold_dir: Path, ctx: DistContext,
               device: torch.device, *, resume: bool, show_progress: bool) -> dict:
    seed_everything(cfg.train.seed)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    train_set, val_set = task.datasets(fold)
    if len(train_set) == 0:
        raise HagviewError(f"fold {fold}: the training set is empty")
    model = task.build_model().to(device)
    main_opt, gate_opt = make_optimizers(model, cfg)
    steps_per_epoch = count_steps(len(train_set), cfg, ctx)
    schedulers = {"main": make_scheduler(main_opt, cfg.optim.main.schedule, steps_per_epoch)}
    if gate_opt is not None:
        schedulers["gates"] = make_scheduler(gate_opt, cfg.optim.gates.schedule, steps_per_epoch)

    state = FoldState()
    resumed_step_state = None
    last_path = fold_dir / "last.pt"
    if resume and last_path.is_file():
        state, resumed_step_state = restore_training_state(last_path, model, main_opt, gate_opt,
                                                           schedulers, device)
        log.info("fold %d: resumed from %s after epoch %d", fold, last_path, state.epochs_done)

    # DDP broadcasts rank 0's weights now and BatchNorm buffers at every forward; the routing
    # pass, which bypasses DDP's reducer, averages its gate gradients itself (distributed.py).
    forward_model = model
    if ctx.enabled:
        forward_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    step = make_step(cfg, task, forward_model, main_opt, gate_opt, schedulers, amp_mode(device, cfg.train.amp))
    if resumed_step_state is not None:
        step.load_state_dict(resumed_step_state)

    fold_started = time.perf_counter()
    epochs_at_start = state.epochs_done
    for epoch in range(state.epochs_done + 1, cfg.train.epochs + 1):
        epoch_started = time.perf_counter()
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        train_loader = make_loader(train_set, cfg, ctx, train=True, epoch=epoch, device=device)
        if hasattr(val_set, "set_epoch"):   # a random validation draw is redrawn every epoch
            val_set.set_epoch(epoch)
        row = {"epoch": epoch}
        row.update(train_one_epoch(step, {"main": main_opt, "gates": gate_opt}, train_loader, cfg, ctx,
                                   device, label=f"fold {fold} epoch {epoch}/{cfg.train.epochs}",
                                   show_progress=show_progress))
        row.update(gate_summary(model))
        if ctx.enabled:   # a cheap proof, every epoch, that the replicas have not drifted apart
            row["ddp_max_param_diff"] = dist_util.max_parameter_difference(model, ctx)

        metrics = None
        if ctx.is_main:
            metrics = evaluate(task, model, make_loader(val_set, cfg, ctx, train=False, epoch=0, device=device))
        metrics = dist_util.broadcast_object(metrics, ctx)
        row.update({f"val_{k}": v for k, v in metrics.items()})
        row["epoch_time_s"] = time.perf_counter() - epoch_started
        state.history.append(ordered_row(row))
        state.epochs_done = epoch

        value = metrics.get(task.primary_metric, float("nan"))
        improved = task.is_better(value, state.best_metric)
        if improved:
            state.best_epoch, state.best_metric, state.best_metrics = epoch, value, dict(metrics)
            state.best_confusion = task.confusion_matrices() if ctx.is_main else {}
            state.best_agreement = _agreement(task, "validation") if ctx.is_main else {}
        if ctx.is_main:
            if improved:
                save_checkpoint(model, fold_dir / "best.pt", checkpoint_metadata(cfg, task, fold, epoch, metrics))
            save_checkpoint(model, last_path, checkpoint_metadata(cfg, task, fold, epoch, metrics),
                            training_state=training_state(state, main_opt, gate_opt, schedulers, step))
            write_fold_files(fold_dir, cfg, task, fold, state)
            log.info("%s", epoch_line(fold, epoch, cfg.train.epochs, row, task.primary_metric, improved,
                                      elapsed=time.perf_counter() - fold_started,
                                      epochs_run=epoch - epochs_at_start))
        dist_util.barrier(ctx)

    result = {"best_epoch": state.best_epoch, "best_metric": state.best_metric,
              "best_metrics": state.best_metrics, "epochs_done": state.epochs_done,
              "completed": state.epochs_done >= cfg.train.epochs,
              "best_checkpoint": f"{fold_dir.name}/best.pt", "last_checkpoint": f"{fold_dir.name}/last.pt"}
    test_set = task.fold_test_dataset(fold) if ctx.is_main else None
    if test_set is not None and (fold_dir / "best.pt").is_file():
        model.load_state_dict(read_checkpoint(fold_dir / "best.pt", device).state_dict)
        test_loader = make_loader(test_set, cfg, ctx, train=False, epoch=0, device=device)
        result["test_metrics"] = evaluate(task, model, test_loader)
        state.best_agreement.update(_agreement(task, "test"))
        write_fold_files(fold_dir, cfg, task, fold, state, test_metrics=result["test_metrics"],
                         test_confusion=task.confusion_matrices())
        log.info("fold %d test (best epoch %s): %s", fold, state.best_epoch,
                 format_metrics(result["test_metrics"]))
    return dist_util.broadcast_object(result, ctx)


# =============================================================================== one epoch (batches)
def train_one_epoch(step, optimizers: dict, loader: DataLoader, cfg: TrainConfig, ctx: DistContext,
                    device: torch.device, *, label: str, show_progress: bool) -> dict[str, float]:
    """Run the step over the loader; returns mean losses and gradient norms over every replica,
    skipped (non-finite) steps, the learning rates at the start of the epoch, and speed."""
    total_steps = len(loader)
    if cfg.train.steps_per_epoch is not None:
        total_steps = min(total_steps, cfg.train.steps_per_epoch)
    sums: dict[str, float] = {}
    samples = 0
    row = {f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in optimizers.items() if opt is not None}
    started = time.perf_counter()
    with Progress(total_steps * cfg.train.batch_size * ctx.world_size, "samples", label,
                  enabled=show_progress, interval=2.0) as progress:
        for i, (inputs, targets) in enumerate(loader):
            if i >= total_steps:
                break
            inputs = to_device(inputs, device)
            targets = to_device(targets, device)
            batch = next(iter(inputs.values())).shape[0]
            result = step.step(inputs, targets)
            for name, value in result.items():
                if name.endswith("_total"):
                    continue                       # running counters of the step object
                weight = 1 if name.endswith("_skipped") else batch
                sums[name] = sums.get(name, 0.0) + float(value) * weight
            samples += batch
            progress.update(batch * ctx.world_size, extra=f"loss {result['main_loss']:.4f}")
    elapsed = time.perf_counter() - started
    names = sorted(sums)
    reduced = dist_util.all_reduce_sums([sums[n] for n in names] + [samples], ctx, device)
    total_samples = max(reduced[-1], 1.0)
    for name, value in zip(names, reduced):
        if name.endswith("_skipped"):
            row["skipped_steps_" + name[:-len("_step_skipped")]] = int(value)   # skipped_steps_main
        else:
            row[f"train_{name}"] = value / total_samples
    row["samples_per_s"] = reduced[-1] / elapsed if elapsed > 0 else float("nan")
    return row


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader: DataLoader) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        return {k: float(v) for k, v in task.evaluate(model, loader).items()}
    finally:
        model.train(was_training)


# =============================================================================== steps
def make_step(cfg: TrainConfig, task: Task, forward_model: nn.Module, main_opt, gate_opt,
              schedulers: dict, amp: str | None):
    """The per-batch step: Gradient Routing (two passes, two optimisers) or the plain step.

    The plain step with a gated model is the "gates trained by the main optimiser, no GR"
    ablation; with `model.gates: false` it is the no-gate baseline. Both step the schedulers
    after every batch and handle AMP, clipping, non-finite gradients and DDP themselves.
    """
    from .routing import GradientRouter, PlainStep

    if not cfg.routing.enabled:
        return PlainStep(forward_model, main_opt, task.main_loss, max_grad_norm=cfg.optim.main.clip,
                         amp=amp, scheduler=schedulers["main"], scheduler_interval="batch")
    return GradientRouter(forward_model, main_opt, gate_opt, task.main_loss, task.routing_loss,
                          reference_accumulation=cfg.routing.reference_accumulation,
                          max_grad_norm_main=cfg.optim.main.clip, max_grad_norm_gates=cfg.optim.gates.clip,
                          amp=amp, main_scheduler=schedulers["main"], gate_scheduler=schedulers.get("gates"),
                          scheduler_interval="batch")


# =============================================================================== optimisers, schedules
def make_optimizers(model: nn.Module, cfg: TrainConfig):
    """Gradient Routing: (main group optimiser, gate optimiser); otherwise (one for all, None)."""
    if not cfg.routing.enabled:
        return build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim.main), None
    gates = list(model.gate_parameters())
    return (build_optimizer(list(model.main_parameters()), cfg.optim.main),
            build_optimizer(gates, cfg.optim.gates))


def build_optimizer(params: list[nn.Parameter], ocfg: OptimizerConfig) -> torch.optim.Optimizer:
    if ocfg.name == "adam":
        return torch.optim.Adam(params, lr=ocfg.lr, betas=ocfg.betas, weight_decay=ocfg.weight_decay)
    if ocfg.name == "adamw":
        return torch.optim.AdamW(params, lr=ocfg.lr, betas=ocfg.betas, weight_decay=ocfg.weight_decay)
    return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, weight_decay=ocfg.weight_decay)


def make_scheduler(optimizer, scfg: ScheduleConfig, steps_per_epoch: int):
    """Stepped once per batch, so a restart period of N epochs is N * steps_per_epoch steps."""
    if scfg.kind == "cosine_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(1, scfg.restart_epochs * steps_per_epoch), T_mult=scfg.restart_mult,
            eta_min=scfg.min_lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def count_steps(num_samples: int, cfg: TrainConfig, ctx: DistContext) -> int:
    per_replica = math.ceil(num_samples / ctx.world_size)
    steps = per_replica // cfg.train.batch_size if per_replica > cfg.train.batch_size else 1
    if cfg.train.steps_per_epoch is not None:
        steps = min(steps, cfg.train.steps_per_epoch)
    return max(1, steps)


# =============================================================================== data loading
def make_loader(dataset: Dataset, cfg: TrainConfig, ctx: DistContext, *, train: bool, epoch: int,
                device: torch.device) -> DataLoader:
    """Training: shuffled (a fresh, seeded order per epoch), sharded over replicas, full batches.

    Validation and test loaders are only used by the main process, in order.
    """
    generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
    sampler = None
    if train and ctx.enabled:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=cfg.train.seed, drop_last=True)
        sampler.set_epoch(epoch)
    drop_last = train and len(dataset) // max(ctx.world_size, 1) > cfg.train.batch_size
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=train and sampler is None,
                      sampler=sampler, num_workers=cfg.train.workers, generator=generator,
                      drop_last=drop_last, pin_memory=device.type == "cuda",
                      worker_init_fn=_seed_worker, persistent_workers=False)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# =============================================================================== devices, seeds, AMP
def _device_type(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def select_device(name: str, ctx: DistContext) -> torch.device:
    kind = _device_type(name)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'train.device': '{name}' asked for, but CUDA is not available here")
        # cuBLAS is only deterministic with a fixed workspace; harmless when determinism is off.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        index = ctx.local_rank if ctx.enabled or name in ("auto", "cuda") else int(name.split(":")[1])
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Same seed -> same model initialisation and the same random draws (on every replica)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_mode(device: torch.device, wanted: bool) -> str | None:
    """bf16 autocast on CUDA where supported (no loss scaling), else fp16 with a scaler; CPU: fp32."""
    if not wanted or device.type != "cuda":
        return None
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


# =============================================================================== checkpoints, files
def checkpoint_metadata(cfg: TrainConfig, task: Task, fold: int, epoch: int, metrics: dict) -> dict:
    return {"kind": task.kind, **task.checkpoint_metadata(), "config": config_to_dict(cfg),
            "metrics": metrics, "epoch": epoch, "fold": fold, "git_commit": git_commit()}


def training_state(state: FoldState, main_opt, gate_opt, schedulers: dict, step) -> dict:
    return {"epoch": state.epochs_done, "step": step.state_dict(),
            "optimizers": {"main": main_opt.state_dict(),
                           "gates": gate_opt.state_dict() if gate_opt is not None else None},
            "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
            "rng": rng_state(),
            "history": state.history, "best_epoch": state.best_epoch, "best_metric": state.best_metric,
            "best_metrics": state.best_metrics, "best_confusion": state.best_confusion}


def restore_training_state(path: Path, model: nn.Module, main_opt, gate_opt, schedulers: dict,
                           device: torch.device) -> tuple[FoldState, dict | None]:
    checkpoint = read_checkpoint(path, device)
    saved = checkpoint.training_state
    if not saved:
        raise HagviewError(f"{path}: holds no training state to resume from")
    try:
        model.load_state_dict(checkpoint.state_dict)
        main_opt.load_state_dict(saved["optimizers"]["main"])
        if gate_opt is not None:
            gate_opt.load_state_dict(saved["optimizers"]["gates"])
        for name, scheduler in schedulers.items():
            scheduler.load_state_dict(saved["schedulers"][name])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise HagviewError(f"{path}: does not match this config's model or optimisers "
                           f"({str(exc).splitlines()[0][:160]})") from None
    set_rng_state(saved["rng"])
    state = FoldState(epochs_done=int(saved["epoch"]), history=list(saved["history"]),
                      best_epoch=saved["best_epoch"], best_metric=saved["best_metric"],
                      best_metrics=dict(saved["best_metrics"]),
                      best_confusion=dict(saved.get("best_confusion") or {}))
    return state, saved.get("step")


def rng_state() -> dict:
    """Every global random stream, as tensors and plain lists (loadable with weights_only)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_fold_files(fold_dir: Path, cfg: TrainConfig, task: Task, fold: int, state: FoldState,
                     test_metrics: dict | None = None, test_confusion: dict | None = None) -> None:
    write_text_atomic(fold_dir / "metrics.csv", history_csv(state.history))
    payload = {"fold": fold, "primary_metric": task.primary_metric, "higher_is_better": task.higher_is_better,
               "best_epoch": state.best_epoch, "best_metric": state.best_metric,
               "best_metrics": state.best_metrics, "best_confusion": state.best_confusion,
               "epochs": state.history}
    if test_metrics is not None:
        payload["test_metrics"] = test_metrics
        payload["test_confusion"] = test_confusion
    write_json_atomic(fold_dir / "metrics.json", _json_safe(payload))
    if cfg.output.report:
        confusion = {f"validation {k}": v for k, v in state.best_confusion.items()}
        confusion.update({f"test {k}": v for k, v in (test_confusion or {}).items()})
        notes = {"run": cfg.name, "fold": fold, "model": cfg.model.name, "gates": cfg.model.gates,
                 "routing": cfg.routing.enabled, "epochs": f"{state.epochs_done}/{cfg.train.epochs}",
                 "best epoch": state.best_epoch, task.primary_metric: state.best_metric}
        if getattr(task, "paper_comparable", None):
            notes["comparable to the paper"] = task.paper_comparable
        notes.update({f"test {k}": v for k, v in (test_metrics or {}).items()
                      if k == task.primary_metric or "mae" in k})
        clinician = {"validation": state.best_metrics}
        if test_metrics:
            clinician["test"] = test_metrics
        write_fold_report(fold_dir / "report.html", f"{cfg.name} - fold {fold}", state.history,
                          confusion, notes, clinician=clinician, agreement=state.best_agreement)


def _agreement(task: Task, name: str) -> dict:
    """{name: (predicted, true)} per frame from the task's latest evaluation, when it keeps them."""
    pairs = getattr(task, "agreement_pairs", lambda: None)()
    return {name: pairs} if pairs is not None else {}


def ordered_row(row: dict) -> dict:
    """Columns a reader looks at first come first: epoch, losses, validation, then the rest."""
    def rank(key: str) -> int:
        if key == "epoch":
            return 0
        if key.startswith("train_") and key.endswith("_loss"):
            return 1
        if key.startswith("val_"):
            return 2
        return 3
    return {k: row[k] for k in sorted(row, key=rank)}


def history_csv(history: list[dict]) -> str:
    columns: list[str] = []
    for row in history:
        columns.extend(c for c in row if c not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buffer.getvalue()


def _json_safe(value):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@torch.no_grad()
def gate_summary(model: nn.Module) -> dict[str, float]:
    """Mean and spread of sigmoid(gate) over every gate channel: how much the gates select."""
    values = [torch.sigmoid(p.detach().float()).flatten() for p in getattr(model, "gate_parameters", list)()]
    if not values:
        return {}
    flat = torch.cat(values)
    return {"gate_mean": float(flat.mean()), "gate_frac_below_0.1": float((flat < 0.1).float().mean())}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))


def epoch_line(fold: int, epoch: int, epochs: int, row: dict, primary: str, improved: bool,
               elapsed: float, epochs_run: int) -> str:
    per_epoch = elapsed / max(epochs_run, 1)
    losses = " ".join(f"{k[len('train_'):]} {v:.4f}" for k, v in row.items()
                      if k.startswith("train_") and k.endswith("_loss"))
    shown = [k for k in row if k.startswith("val_") and ("mae" in k or k == f"val_{primary}")]
    val = " ".join(f"{k} {row[k]:.4g}" for k in shown)
    return (f"fold {fold} epoch {epoch}/{epochs}: {losses} | {val}{' *' if improved else ''} | "
            f"{row.get('samples_per_s', float('nan')):.1f} samples/s, {format_seconds(per_epoch)}/epoch, "
            f"{format_seconds(per_epoch * (epochs - epoch))} left in fold")


if __name__ == "__main__":
    raise SystemExit(main())
