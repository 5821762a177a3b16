"""Gradient Routing: which pass changes which parameters, the reference option, training works."""
import pytest
import torch

from trainer.losses import ROUTING_CLASS_WEIGHTS, SizeRegressionLoss
from trainer.models import build_model
from trainer.routing import GradientRouter, PlainStep


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    kwargs = dict(streams=("rgb", "mask"), input_size=32, width_mult=0.125, hidden=16)
    kwargs.update(kw)
    return build_model("hag_resnet18", **kwargs)


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = {s: torch.randn(n, 3, 32, 32, generator=g) for s in ("rgb", "mask")}
    targets = {"size_mm": torch.tensor([2.0, 4.0, 6.0, 8.0, 12.0, 18.0][:n])}
    return inputs, targets


def _zero_loss(outputs, targets):
    # depends on the outputs (so backward runs through the graph) but has zero gradient
    return outputs["size_mm"].sum() * 0.0


def _router(model, main_loss, routing_loss, reference=False, lr=1e-2):
    main_opt = torch.optim.Adam(model.main_parameters(), lr=lr)
    gate_opt = torch.optim.Adam(model.gate_parameters(), lr=lr)
    return GradientRouter(model, main_opt, gate_opt, main_loss, routing_loss,
                          reference_accumulation=reference, max_grad_norm_main=None)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params)]


def _backbone_weight(model):
    # the stem convolution: its gradient reaches it through layer1's identity shortcuts even
    # though every block's last BatchNorm starts at zero (zero-init residual)
    return model.backbones["rgb"].conv1.weight


def test_routing_pass_changes_only_gates_main_pass_only_weights():
    model = _tiny()
    model.train()
    inputs, targets = _batch()
    # Main loss with zero gradient: whatever moves is moved by the routing pass.
    router = _router(model, _zero_loss, SizeRegressionLoss())
    gates, weights = list(model.gate_parameters()), list(model.main_parameters())
    g0, w0 = _snapshot(gates), _snapshot(weights)
    out = router.step(inputs, targets)
    assert all(_changed(g0, gates)), "every gate should move under the routing loss"
    assert not any(_changed(w0, weights)), "the routing pass must not touch main parameters"
    assert out["routing_loss"] > 0 and out["main_loss"] == 0.0

    # Routing loss with zero gradient: whatever moves is moved by the main pass.
    router = _router(model, SizeRegressionLoss(), _zero_loss)
    g0, b0 = _snapshot(gates), _snapshot([_backbone_weight(model)])
    router.step(inputs, targets)
    assert not any(_changed(g0, gates)), "the main pass must not touch gates"
    assert _changed(b0, [_backbone_weight(model)])[0]
    assert router.main_optimizer.state and all(p.grad is None for p in gates)


def test_routing_pass_computes_no_weight_gradients():
    """Hooks on every main parameter fire when autograd computes its gradient; none may fire
    before the gate optimiser steps (i.e. during the routing pass)."""
    model = _tiny()
    inputs, targets = _batch()
    router = _router(model, SizeRegressionLoss(), SizeRegressionLoss())
    computed = {"main": 0, "gates": 0}
    for p in model.main_parameters():
        p.register_hook(lambda g: computed.__setitem__("main", computed["main"] + 1))
    for p in model.gate_parameters():
        p.register_hook(lambda g: computed.__setitem__("gates", computed["gates"] + 1))
    seen_at_gate_step = {}
    gate_step = router.gate_optimizer.step

    def recording_step(*args, **kwargs):
        seen_at_gate_step.update(computed)
        return gate_step(*args, **kwargs)

    router.gate_optimizer.step = recording_step
    router.step(inputs, targets)
    n_gates, n_main = len(list(model.gate_parameters())), len(list(model.main_parameters()))
    assert seen_at_gate_step == {"main": 0, "gates": n_gates}
    assert computed["main"] == n_main     # the main pass computed each weight gradient once


def test_reference_accumulation_shares_gradients_between_passes():
    inputs, targets = _batch()
    main_loss = SizeRegressionLoss()
    routing_loss = SizeRegressionLoss(class_weights=ROUTING_CLASS_WEIGHTS)

    # 1. With a zero-gradient main loss the backbone still moves: it got the routing gradient.
    model = _tiny()
    router = _router(model, _zero_loss, routing_loss, reference=True)
    w0 = _snapshot([_backbone_weight(model)])
    router.step(inputs, targets)
    assert _changed(w0, [_backbone_weight(model)])[0]

    # 2. The gradient buffers hold exactly routing + main gradients (computed separately).
    #    SGD lr=0 keeps the weights fixed so both passes see the same function.
    model = _tiny(seed=3)
    model.eval()   # BatchNorm in eval: both forward passes compute the same function
    gates, weights = list(model.gate_parameters()), list(model.main_parameters())
    expected_r = torch.autograd.grad(routing_loss(model(inputs), targets), gates + weights)
    expected_m = torch.autograd.grad(main_loss(model(inputs), targets), gates + weights)
    router = GradientRouter(model, torch.optim.SGD(weights, lr=0.0), torch.optim.SGD(gates, lr=0.0),
                            main_loss, routing_loss, reference_accumulation=True,
                            max_grad_norm_main=None, max_grad_norm_gates=None)
    router.step(inputs, targets)
    for p, r, m in zip(gates + weights, expected_r, expected_m):
        torch.testing.assert_close(p.grad, r + m, rtol=1e-4, atol=1e-7)

    # 3. The isolated router leaves the main loss's gradient off the gates and the routing
    #    loss's off the weights.
    router = GradientRouter(model, torch.optim.SGD(weights, lr=0.0), torch.optim.SGD(gates, lr=0.0),
                            main_loss, routing_loss, max_grad_norm_main=None)
    router.step(inputs, targets)
    assert all(p.grad is None for p in gates)
    for p, m in zip(weights, expected_m[len(gates):]):
        torch.testing.assert_close(p.grad, m, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("reference", [False, True], ids=["isolated", "reference"])
def test_a_few_steps_lower_the_loss(reference):
    model = _tiny(seed=5)
    model.train()
    inputs, targets = _batch()
    loss = SizeRegressionLoss()
    router = _router(model, loss, SizeRegressionLoss(class_weights=ROUTING_CLASS_WEIGHTS),
                     reference=reference, lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = float(loss(model(inputs), targets))
    model.train()
    for _ in range(25):
        out = router.step(inputs, targets)
    assert out["main_step_skipped"] == 0.0
    model.eval()
    with torch.no_grad():
        after = float(loss(model(inputs), targets))
    assert after < 0.5 * before


def test_plain_step_trains_everything_it_is_given():
    model = _tiny(seed=6)
    inputs, targets = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = PlainStep(model, opt, SizeRegressionLoss())
    g0 = _snapshot(model.gate_parameters())
    first = step.step(inputs, targets)["main_loss"]
    assert all(_changed(g0, list(model.gate_parameters())))   # the no-GR ablation moves gates too
    for _ in range(15):
        last = step.step(inputs, targets)["main_loss"]
    assert last < first


def test_non_finite_gradients_skip_the_step_and_are_counted():
    model = _tiny(seed=7)
    inputs, targets = _batch()

    def nan_loss(outputs, targets):
        return outputs["size_mm"].sum() * float("nan")

    router = _router(model, SizeRegressionLoss(), nan_loss)
    g0 = _snapshot(model.gate_parameters())
    out = router.step(inputs, targets)
    assert out["gate_step_skipped"] == 1.0 and out["skipped_gates_total"] == 1.0
    assert out["main_step_skipped"] == 0.0
    assert not any(_changed(g0, list(model.gate_parameters())))


def test_clipping_and_schedulers_and_validation():
    model = _tiny(seed=8)
    inputs, targets = _batch()
    main_opt = torch.optim.SGD(model.main_parameters(), lr=0.1)
    gate_opt = torch.optim.SGD(model.gate_parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(main_opt, T_0=4)
    router = GradientRouter(model, main_opt, gate_opt, SizeRegressionLoss(), SizeRegressionLoss(),
                            max_grad_norm_main=1e-3, max_grad_norm_gates=1e-3, main_scheduler=sched)
    w0 = _snapshot(list(model.main_parameters()))
    out = router.step(inputs, targets)
    assert out["grad_norm_main"] > 1e-3      # reported before clipping
    moved = torch.cat([(p.detach() - b).reshape(-1) for b, p in zip(w0, model.main_parameters())])
    assert float(moved.norm()) <= 0.1 * 1e-3 * 1.001   # lr * clipped norm
    assert main_opt.param_groups[0]["lr"] < 0.1         # stepped per batch

    with pytest.raises(ValueError, match="main optimiser holds gate parameters"):
        GradientRouter(model, torch.optim.SGD(model.parameters(), lr=0.1), gate_opt,
                       SizeRegressionLoss(), SizeRegressionLoss())
    with pytest.raises(ValueError, match="gated model"):
        plain = _tiny(gates=False)
        GradientRouter(plain, torch.optim.SGD(plain.parameters(), lr=0.1),
                       torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                       SizeRegressionLoss(), SizeRegressionLoss())
    with pytest.raises(ValueError, match="fp16"):
        GradientRouter(model, main_opt, gate_opt, SizeRegressionLoss(), SizeRegressionLoss(), amp="fp16")


def test_bf16_autocast_step_runs_on_cpu():
    model = _tiny(seed=9)
    inputs, targets = _batch()
    router = GradientRouter(model, torch.optim.Adam(model.main_parameters(), lr=1e-3),
                            torch.optim.Adam(model.gate_parameters(), lr=1e-3),
                            SizeRegressionLoss(), SizeRegressionLoss(), amp="bf16")
    out = router.step(inputs, targets)
    assert out["main_step_skipped"] == 0.0 and out["main_loss"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("reference", [False, True], ids=["isolated", "reference"])
def test_fp16_grad_scaler_path(reference):
    """The CUDA fp16 path (autocast + one GradScaler per batch), exercised with CPU fp16
    autocast: overflowing steps while the scale calibrates are skipped and counted, then
    training proceeds and the loss falls."""
    model = _tiny(seed=10)
    inputs, targets = _batch()
    router = _router(model, SizeRegressionLoss(), SizeRegressionLoss(), reference=reference, lr=3e-3)
    router.amp = "fp16"
    router.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20)
    first = router.step(inputs, targets)
    assert first["main_step_skipped"] == 1.0 and first["gate_step_skipped"] == 1.0
    for _ in range(13):
        last = router.step(inputs, targets)
    assert last["main_step_skipped"] == 0.0 and router.scaler.get_scale() < 2.0 ** 20
    assert 1 <= last["skipped_main_total"] <= 10
    assert last["main_loss"] < first["main_loss"]
    state = router.state_dict()
    assert state["scaler"]["scale"] == router.scaler.get_scale() and state["steps"] == 14
