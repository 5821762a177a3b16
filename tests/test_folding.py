"""Exact gate folding: the folded copy has no gates and computes the same outputs (fp32)."""
import pytest
import torch
from torch import nn

from trainer.models import build_model
from trainer.models.gates import Gate, scale_conv_input_channels_, scale_linear_columns_, scale_linear_outputs_

REL_TOL = 1e-5


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Spread gates well away from 0.5 and give BatchNorm non-trivial statistics, so a folding
    mistake (wrong slice, missed gate, BN-order error) shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Gate):
                module.logit.copy_(torch.randn(module.logit.shape, generator=g) * 2.0)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / module.in_features ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)


def _assert_close_rel(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = a.abs().max().clamp_min(1e-6)
    assert float((a - b).abs().max() / scale) <= REL_TOL


CASES = [
    ("hag_resnet18", dict(streams=("rgb",), input_size=32, width_mult=0.125, head="both", hidden=16)),
    ("hag_resnet18", dict(streams=("rgb", "mask", "depth"), input_size=48, width_mult=0.25, head="regression", hidden=24)),
    ("hag_vit_tiny", dict(streams=("rgb",), input_size=32, embed_dim=48, depth=2, num_heads=3, head="both")),
    ("hag_vit_tiny", dict(streams=("rgb", "mask"), input_size=32, embed_dim=48, depth=2, num_heads=3)),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=["resnet-1stream", "resnet-3streams", "vit-1stream", "vit-2streams"])
def test_folded_model_matches_and_has_no_gates(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    _randomise(model)
    model.eval()
    folded = model.fold_gates().eval()

    assert list(model.gate_parameters())
    assert list(folded.gate_parameters()) == []
    assert not any(isinstance(m, Gate) for m in folded.modules())
    assert folded.init_kwargs["gates"] is False
    assert type(folded) is type(model) and folded.output_names == model.output_names
    # the folded copy holds exactly the non-gate parameters
    assert sum(p.numel() for p in folded.parameters()) == \
        sum(p.numel() for p in model.main_parameters())

    size = kwargs["input_size"]
    inputs = {s: torch.randn(3, 1 if s == "depth" else 3, size, size) for s in model.input_names}
    with torch.no_grad():
        expected = model(inputs)
        got = folded(inputs)
        positional = folded(*[inputs[s] for s in folded.input_names])
    assert list(got) == list(model.output_names)
    for key in model.output_names:
        _assert_close_rel(expected[key], got[key])
        torch.testing.assert_close(positional[key], got[key], rtol=0, atol=0)
    # the gated model itself was not modified by folding
    assert any(isinstance(m, Gate) for m in model.modules())


def test_unfolded_reference_differs_when_gates_are_dropped():
    """Guards the parity test: simply deleting the gates (no folding) changes the outputs."""
    torch.manual_seed(1)
    model = build_model("hag_resnet18", streams=("rgb",), input_size=32, width_mult=0.125, hidden=16)
    _randomise(model)
    model.eval()
    stripped = build_model("hag_resnet18", streams=("rgb",), input_size=32, width_mult=0.125, hidden=16, gates=False)
    stripped.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("logit")})
    stripped.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model({"rgb": x})["size_mm"] - stripped({"rgb": x})["size_mm"]).abs().max() > 1e-3


def test_scale_helpers_are_exact_on_their_own():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    s = torch.rand(4) + 0.1
    x = torch.randn(2, 4, 7, 7)
    expected = conv(x * s.view(1, -1, 1, 1))
    scale_conv_input_channels_(conv, s)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-6)

    lin = nn.Linear(6, 3)
    s6, s3, v = torch.rand(6) + 0.1, torch.rand(3) + 0.1, torch.randn(4, 6)
    expected_cols = lin(v * s6)
    scale_linear_columns_(lin, s6)
    torch.testing.assert_close(lin(v), expected_cols, rtol=1e-5, atol=1e-6)
    expected_rows = lin(v) * s3
    scale_linear_outputs_(lin, s3)
    torch.testing.assert_close(lin(v), expected_rows, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="input channels"):
        scale_conv_input_channels_(conv, torch.ones(3))


def test_folded_model_exports_to_onnx_without_gate_multiplications(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    model = build_model("hag_resnet18", streams=("rgb", "mask"), input_size=32, width_mult=0.125, hidden=16)
    _randomise(model)
    model.eval()
    folded = model.fold_gates().eval()

    def export(m, path):
        torch.onnx.export(m, m.example_inputs(2), str(path), input_names=list(m.input_names),
                          output_names=list(m.output_names), dynamo=False, opset_version=18,
                          dynamic_axes={n: {0: "batch"} for n in m.input_names})
        return onnx.load(str(path))

    gated_graph = export(model, tmp_path / "gated.onnx")
    folded_graph = export(folded, tmp_path / "folded.onnx")
    count = lambda g, op: sum(1 for n in g.graph.node if n.op_type == op)
    # 4 stage gates x 2 streams + L1 + L2 = 10 sigmoids and products in the gated graph
    assert count(gated_graph, "Sigmoid") == 10
    assert count(folded_graph, "Sigmoid") == 0 and count(folded_graph, "Mul") < count(gated_graph, "Mul")

    session = ort.InferenceSession(str(tmp_path / "folded.onnx"), providers=["CPUExecutionProvider"])
    x = {n: torch.randn(5, 3, 32, 32) for n in folded.input_names}
    onnx_out = session.run(None, {n: t.numpy() for n, t in x.items()})
    with torch.no_grad():
        expected = model(x)["size_mm"]
    _assert_close_rel(expected, torch.from_numpy(onnx_out[0]))
