"""Gradient Routing (method.md): two parameter groups, two optimisers, two passes per batch.

`GradientRouter.step(inputs, targets)` runs, for one batch:
1. the routing pass: forward, routing loss, gradients with respect to the gate logits only
   (`torch.autograd.grad` on the gates, so no weight gradient of the main group is computed),
   clip, step the gate optimiser;
2. the main pass: forward again with the updated gates, main loss, backward, the gates'
   share of that gradient is discarded, clip, step the main optimiser.
So the routing pass changes only gates and the main pass only non-gate parameters.

`reference_accumulation=True` reproduces the public reference training loop
(cosmoimd/feature-selection-gates, runners/trainer.py): both optimisers' gradients are zeroed
once per batch; the routing pass calls `backward()` on the whole model, clips the norm of ALL
the model's gradients together, and steps the gate optimiser; the main pass's `backward()`
then ADDS to those gradients, so the main optimiser steps on routing + main gradients,
clipped together over all parameters. (The gate optimiser has already stepped when the main
gradient arrives and is zeroed at the next batch, so in the reference the gates' update
never contains the main loss; their gradient buffer does hold both after the step.)
One difference is deliberate: the reference replaces non-finite gradient entries by zero
(`nan_to_num`) and steps anyway; both modes here skip the step and count it instead.

`PlainStep` is the baseline: one optimiser, one forward/backward per batch. With a gated model
and an optimiser over all parameters it is the "gates trained by the main optimiser, no GR"
ablation.

Common to both:
- losses are called as `loss(outputs: dict, targets: dict) -> Tensor`, outputs cast to fp32;
- `amp`: None (fp32), "bf16" (autocast; CPU or CUDA), "fp16" (CUDA autocast with one
  GradScaler shared by both passes and updated once per batch);
- gradient clipping per group (`None` = no clipping; the norm is still reported);
- non-finite guard: a group whose gradient norm is not finite does not step; the returned
  dict says so and running totals are kept (with fp16 these include the scaler's overflow
  steps, which are expected while it calibrates);
- schedulers: `scheduler_interval="batch"` steps them after every batch (build the schedule
  in batches, e.g. CosineAnnealingWarmRestarts(T_0=epochs_per_cycle * batches_per_epoch),
  equivalent to the reference's fractional-epoch stepping); "epoch" steps them in
  `end_epoch()`.
- DistributedDataParallel: pass the DDP-wrapped model. The routing pass runs under
  `no_sync()` and the gate gradients are averaged across processes explicitly; the main pass
  is an ordinary DDP backward.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from .models.checkpoint import unwrap_model
from .models.gates import gate_parameters, main_parameters

LossFn = Callable[[dict, dict], torch.Tensor]
AMP_MODES = (None, "bf16", "fp16")
SCHEDULER_INTERVALS = ("batch", "epoch")


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _float_outputs(outputs: dict) -> dict:
    return {k: (v.float() if torch.is_floating_point(v) else v) for k, v in outputs.items()}


class _Stepper:
    """Mixed precision, clipping, the non-finite guard and schedulers, shared by both steps."""

    def __init__(self, model: nn.Module, amp: str | None, schedulers: list, scheduler_interval: str) -> None:
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of None, 'bf16', 'fp16'; got {amp!r}")
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval must be 'batch' or 'epoch', got {scheduler_interval!r}")
        self.model = model
        self.core = unwrap_model(model)
        first = next(self.core.parameters(), None)
        if first is None:
            raise ValueError("the model has no parameters to train")
        self.device_type = first.device.type
        if amp == "fp16" and self.device_type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' or None on "
                             f"{self.device_type}")
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.schedulers = [s for s in schedulers if s is not None]
        self.scheduler_interval = scheduler_interval
        self.skipped = {"main": 0, "gates": 0}
        self.steps = 0

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def forward(self, inputs) -> dict:
        with self.autocast():
            outputs = self.model(inputs)
        return _float_outputs(outputs)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def clip_and_step(self, optimizer, params: list[nn.Parameter], max_norm: float | None,
                      group: str) -> tuple[float, bool]:
        """Unscale, measure, clip and step `optimizer`; returns (grad norm, stepped)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return 0.0, False
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        norm_value = float(norm)
        if not math.isfinite(norm_value):
            self.skipped[group] += 1
            return norm_value, False
        if max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()
        return norm_value, True

    def after_batch(self) -> None:
        if self.scaler is not None:
            self.scaler.update()
        self.steps += 1
        if self.scheduler_interval == "batch":
            for scheduler in self.schedulers:
                scheduler.step()

    def end_epoch(self) -> None:
        """Step the schedulers when they run per epoch (no-op for per-batch schedules)."""
        if self.scheduler_interval == "epoch":
            for scheduler in self.schedulers:
                scheduler.step()

    def state_dict(self) -> dict:
        """Counters and the fp16 scaler (optimisers/schedulers are saved by their owner)."""
        return {"steps": self.steps, "skipped": dict(self.skipped),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        self.skipped.update(state.get("skipped", {}))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class GradientRouter(_Stepper):
    """Two-pass Gradient Routing step (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        main_optimizer: torch.optim.Optimizer,
        gate_optimizer: torch.optim.Optimizer,
        main_loss: LossFn,
        routing_loss: LossFn,
        reference_accumulation: bool = False,
        max_grad_norm_main: float | None = 8.0,
        max_grad_norm_gates: float | None = None,
        amp: str | None = None,
        main_scheduler=None,
        gate_scheduler=None,
        scheduler_interval: str = "batch",
    ) -> None:
        super().__init__(model, amp, [main_scheduler, gate_scheduler], scheduler_interval)
        self.main_optimizer = main_optimizer
        self.gate_optimizer = gate_optimizer
        self.main_loss = main_loss
        self.routing_loss = routing_loss
        self.reference_accumulation = bool(reference_accumulation)
        self.max_grad_norm_main = max_grad_norm_main
        self.max_grad_norm_gates = max_grad_norm_gates
        self.gate_params = [p for p in gate_parameters(self.core) if p.requires_grad]
        self.main_params = [p for p in main_parameters(self.core) if p.requires_grad]
        self.all_params = [p for p in self.core.parameters() if p.requires_grad]
        if not self.gate_params:
            raise ValueError("Gradient Routing needs a gated model (gates=True); use PlainStep for gate-free models")
        gate_ids = {id(p) for p in self.gate_params}
        in_main = [p for p in _optimizer_params(main_optimizer) if id(p) in gate_ids]
        if in_main:
            raise ValueError("the main optimiser holds gate parameters; give it model.main_parameters() "
                             "so only the gate optimiser updates gates")
        stray = [p for p in _optimizer_params(gate_optimizer) if id(p) not in gate_ids]
        if stray:
            raise ValueError("the gate optimiser holds non-gate parameters; give it model.gate_parameters()")

    # ---- the step ----
    def step(self, inputs: dict, targets: dict) -> dict[str, float]:
        if self.reference_accumulation:
            return self._reference_step(inputs, targets)
        return self._routed_step(inputs, targets)

    def _routed_step(self, inputs: dict, targets: dict) -> dict[str, float]:
        # 1. routing pass: gradients for the gates only.
        with self._without_ddp_sync():
            routing_loss = self.routing_loss(self.forward(inputs), targets)
            gate_grads = torch.autograd.grad(self.scaled(routing_loss), self.gate_params, allow_unused=True)
        for param, grad in zip(self.gate_params, gate_grads):
            param.grad = torch.zeros_like(param) if grad is None else grad
        self._average_gate_grads_across_processes()
        gate_norm, gate_stepped = self.clip_and_step(self.gate_optimizer, self.gate_params,
                                                     self.max_grad_norm_gates, "gates")
        # 2. main pass with the updated gates: gradients for the main group only.
        self.main_optimizer.zero_grad(set_to_none=True)
        main_loss = self.main_loss(self.forward(inputs), targets)
        self.scaled(main_loss).backward()
        for param in self.gate_params:
            param.grad = None   # the main loss never reaches the gates
        main_norm, main_stepped = self.clip_and_step(self.main_optimizer, self.main_params,
                                                     self.max_grad_norm_main, "main")
        self.after_batch()
        return self._report(main_loss, routing_loss, main_norm, gate_norm, main_stepped, gate_stepped)

    def _reference_step(self, inputs: dict, targets: dict) -> dict[str, float]:
        self.main_optimizer.zero_grad(set_to_none=True)
        self.gate_optimizer.zero_grad(set_to_none=True)
        routing_loss = self.routing_loss(self.forward(inputs), targets)
        self.scaled(routing_loss).backward()          # reaches every parameter
        gate_norm, gate_stepped = self._clip_all_and_step(self.gate_optimizer, self.gate_params,
                                                          self.max_grad_norm_gates, "gates")
        main_loss = self.main_loss(self.forward(inputs), targets)
        self.scaled(main_loss).backward()             # accumulates on the routing gradients
        main_norm, main_stepped = self._clip_all_and_step(self.main_optimizer, self.main_params,
                                                          self.max_grad_norm_main, "main")
        self.after_batch()
        return self._report(main_loss, routing_loss, main_norm, gate_norm, main_stepped, gate_stepped)

    def _clip_all_and_step(self, optimizer, group_params, max_norm, group) -> tuple[float, bool]:
        # As the reference: the clipping norm is taken over all the model's gradients, not
        # only the group that steps. Only the stepping group is unscaled (fp16) so the norm
        # is measured on the group's true gradients and the other group's scaled ones are
        # left for their own unscale_ later in this batch.
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grads = [p.grad for p in (self.all_params if self.scaler is None else group_params) if p.grad is not None]
        if not grads:
            return 0.0, False
        norm = torch.nn.utils.get_total_norm(grads)
        norm_value = float(norm)
        if not math.isfinite(norm_value):
            self.skipped[group] += 1
            return norm_value, False
        if max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(self.all_params if self.scaler is None else group_params,
                                                 max_norm, norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()
        return norm_value, True

    def _report(self, main_loss, routing_loss, main_norm, gate_norm, main_stepped, gate_stepped) -> dict[str, float]:
        return {
            "main_loss": float(main_loss.detach()),
            "routing_loss": float(routing_loss.detach()),
            "grad_norm_main": main_norm,
            "grad_norm_gates": gate_norm,
            "main_step_skipped": float(not main_stepped),
            "gate_step_skipped": float(not gate_stepped),
            "skipped_main_total": float(self.skipped["main"]),
            "skipped_gates_total": float(self.skipped["gates"]),
        }

    # ---- DistributedDataParallel ----
    def _without_ddp_sync(self):
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()

    def _average_gate_grads_across_processes(self) -> None:
        if self.model is self.core or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return
        world = torch.distributed.get_world_size()
        if world == 1:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in self.gate_params])
        torch.distributed.all_reduce(flat)
        flat /= world
        offset = 0
        for param in self.gate_params:
            count = param.numel()
            param.grad.copy_(flat[offset:offset + count].view_as(param))
            offset += count


class PlainStep(_Stepper):
    """One optimiser over whatever parameters it holds; one forward/backward per batch."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: LossFn,
        max_grad_norm: float | None = 8.0,
        amp: str | None = None,
        scheduler=None,
        scheduler_interval: str = "batch",
    ) -> None:
        super().__init__(model, amp, [scheduler], scheduler_interval)
        self.optimizer = optimizer
        self.loss = loss
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in _optimizer_params(optimizer) if p.requires_grad]

    def step(self, inputs: dict, targets: dict) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.forward(inputs), targets)
        self.scaled(loss).backward()
        norm, stepped = self.clip_and_step(self.optimizer, self.params, self.max_grad_norm, "main")
        self.after_batch()
        return {
            "main_loss": float(loss.detach()),
            "grad_norm_main": norm,
            "main_step_skipped": float(not stepped),
            "skipped_main_total": float(self.skipped["main"]),
        }
