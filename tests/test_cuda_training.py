"""The trainer on CUDA: a Gradient Routing step under fp16 autocast with the GradScaler, and a
DDP-free training epoch on synthetic data. Skipped with the reason where CUDA is missing; the
GPU check (scripts/gpu_check.sh) runs them on a lent GPU."""
from __future__ import annotations

import csv
import math

import pytest
import torch

import trainer.train
from test_routing import _batch, _backbone_weight, _changed, _snapshot, _tiny, _zero_loss
from test_train import tiny_config  # noqa: F401  (the session fixture: tiny synthetic data set)
from trainer.losses import SizeRegressionLoss
from trainer.models import load_checkpoint
from trainer.routing import GradientRouter

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")]


def _cuda_batch(n=6):
    inputs, targets = _batch(n)
    return ({k: v.cuda() for k, v in inputs.items()}, {k: v.cuda() for k, v in targets.items()})


def test_routing_step_fp16_autocast_with_grad_scaler():
    """Under fp16 autocast with the GradScaler: the routing pass moves the gates only; training
    with both passes lowers the loss; parameters stay float32; the scaler is stepped once per batch."""
    model = _tiny(seed=11).cuda().train()
    inputs, targets = _cuda_batch()
    main_opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    gate_opt = torch.optim.Adam(model.gate_parameters(), lr=1e-2)
    router = GradientRouter(model, main_opt, gate_opt, _zero_loss, SizeRegressionLoss(), amp="fp16",
                            max_grad_norm_main=None)
    assert isinstance(router.scaler, torch.amp.GradScaler) and router.scaler.is_enabled()
    router.scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 8)   # no overflow while calibrating
    gates, weights = list(model.gate_parameters()), list(model.main_parameters())
    g0, w0 = _snapshot(gates), _snapshot(weights)
    out = router.step(inputs, targets)
    assert out["gate_step_skipped"] == 0.0
    assert all(_changed(g0, gates)) and not any(_changed(w0, weights))

    model = _tiny(seed=12).cuda().train()
    loss = SizeRegressionLoss()
    router = GradientRouter(model, torch.optim.Adam(model.main_parameters(), lr=3e-3),
                            torch.optim.Adam(model.gate_parameters(), lr=3e-3), loss, SizeRegressionLoss(),
                            amp="fp16")
    stem = _backbone_weight(model).detach().clone()
    first = router.step(inputs, targets)
    for _ in range(30):
        last = router.step(inputs, targets)
    assert last["main_step_skipped"] == 0.0 and last["main_loss"] < first["main_loss"]
    assert last["skipped_main_total"] <= 10            # overflow steps while the scale calibrates
    assert not torch.equal(stem, _backbone_weight(model).detach())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert router.state_dict()["steps"] == 31


@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_one_training_epoch_on_cuda(tiny_config, tmp_path, monkeypatch, amp):  # noqa: F811
    """hagview-train for one epoch on the GPU without DDP (amp as the trainer picks it: bf16 on
    an H100; and forced fp16 with the GradScaler); the checkpoint loads on the CPU."""
    if amp == "fp16":
        monkeypatch.setattr(trainer.train, "amp_mode", lambda device, wanted: "fp16")
    out = tmp_path / f"run-{amp}"
    assert trainer.train.main(["--config", str(tiny_config), "--out", str(out), "--fold", "0", "--quiet",
                               "--set", "train.epochs=1", "--set", "train.device=cuda",
                               "--set", "train.amp=true"]) == 0
    with open(out / "fold-0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert math.isfinite(float(rows[0]["train_main_loss"])) and math.isfinite(float(rows[0]["val_frame_mae_mm"]))
    assert float(rows[0]["samples_per_s"]) > 0
    model, meta = load_checkpoint(out / "fold-0" / "last.pt")
    assert meta["epoch"] == 1
    x = torch.rand(2, 3, 48, 48)
    assert torch.isfinite(model({"rgb": x, "mask": x})["size_mm"]).all()
