"""Gates, the model registry, model shapes, checkpoints and ImageNet weight loading."""
import math
import pathlib
import pickle

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError, HagviewError
from trainer.models import build_model, load_checkpoint, load_imagenet_weights, model_names, save_checkpoint
from trainer.models.checkpoint import CheckpointError, read_checkpoint
from trainer.models.gates import Gate
from trainer.models.resnet import GatedResNetTrunk

TINY_RESNET = dict(streams=("rgb", "mask"), input_size=32, width_mult=0.125, hidden=16)
TINY_VIT = dict(input_size=32, embed_dim=48, depth=2, num_heads=3)


# ---- the gate ----

def test_gate_multiplies_each_channel_by_its_own_sigmoid():
    gate = Gate(4)
    with torch.no_grad():
        gate.logit.copy_(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
    x = torch.ones(2, 4, 3, 3)
    y = gate(x)
    expected = torch.sigmoid(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
    torch.testing.assert_close(y[0, :, 1, 2], expected)
    # no softmax: raising one channel's logit leaves every other channel's weight unchanged
    with torch.no_grad():
        gate.logit[3] = 10.0
    torch.testing.assert_close(gate(x)[0, :3, 0, 0], expected[:3])
    assert float(gate.scale().detach().sum()) > 1.5   # weights do not sum to one

    tokens = Gate(5, channel_dim=-1)
    t = torch.randn(2, 7, 5)
    torch.testing.assert_close(tokens(t), t * torch.sigmoid(tokens.logit))


def test_gate_init_is_xavier_normal_with_sigmoid_gain():
    torch.manual_seed(0)
    channels = 512
    logits = torch.cat([Gate(channels).logit.detach() for _ in range(40)])
    expected_std = nn.init.calculate_gain("sigmoid") * math.sqrt(2.0 / (1 + channels))
    assert abs(float(logits.std()) / expected_std - 1.0) < 0.05
    assert abs(float(logits.mean())) < 0.01
    values = torch.sigmoid(logits)
    assert 0.49 < float(values.mean()) < 0.51 and float(values.min()) > 0.4 and float(values.max()) < 0.6


def test_gate_gradient_is_per_channel():
    gate = Gate(3)
    x = torch.zeros(1, 3, 2, 2)
    x[:, 1] = 1.0                        # only channel 1 carries signal
    gate(x).sum().backward()
    grad = gate.logit.grad
    assert grad[0] == 0 and grad[2] == 0 and grad[1] > 0


# ---- registry and models ----

def test_registry_lists_models_and_rejects_bad_names_and_arguments():
    assert {"hag_resnet18", "hag_vit_tiny", "hag_detector"} <= set(model_names())
    with pytest.raises(ConfigError, match="unknown model 'resnet50'"):
        build_model("resnet50")
    with pytest.raises(ConfigError, match="unknown argument 'widht_mult'"):
        build_model("hag_resnet18", widht_mult=0.5)
    with pytest.raises(ConfigError, match="unknown input stream 'infrared'"):
        build_model("hag_resnet18", streams=("rgb", "infrared"))
    with pytest.raises(ConfigError, match="head must be one of"):
        build_model("hag_resnet18", head="segmentation", **{k: v for k, v in TINY_RESNET.items()})


@pytest.mark.parametrize("head,keys", [("regression", ["size_mm"]), ("classification", ["logits"]),
                                       ("both", ["size_mm", "logits"])])
def test_resnet_heads_and_names(head, keys):
    model = build_model("hag_resnet18", head=head, num_classes=3, **TINY_RESNET).eval()
    x = {"rgb": torch.randn(2, 3, 32, 32), "mask": torch.randn(2, 3, 32, 32)}
    out = model(x)
    assert list(out) == keys and model.output_names == tuple(keys)
    assert model.input_names == ("rgb", "mask")
    if "size_mm" in out:
        assert out["size_mm"].shape == (2, 1)
    if "logits" in out:
        assert out["logits"].shape == (2, 3)
    # same result positionally and by keyword (ONNX export calling conventions)
    torch.testing.assert_close(model(x["rgb"], x["mask"])[keys[0]], out[keys[0]])
    torch.testing.assert_close(model(rgb=x["rgb"], mask=x["mask"])[keys[0]], out[keys[0]])
    with pytest.raises(KeyError, match="input 'mask' is missing"):
        model({"rgb": x["rgb"]})
    assert model.init_kwargs["head"] == head and model.architecture == "hag_resnet18"


def test_resnet_gate_count_and_baseline_without_gates():
    gated = build_model("hag_resnet18", streams=("rgb", "mask", "depth"), input_size=32, width_mult=0.125)
    names = [n for n, _ in gated.named_gate_parameters()]
    assert len(names) == 3 * 4 + 2          # 4 stage gates per stream, L1, L2
    assert "backbones.depth.stage_gates.3.logit" in names and "gate_l1.logit" in names
    channels = gated.backbones["rgb"].stage_channels
    assert channels == (8, 16, 32, 64)
    assert gated.gate_l1.channels == 3 * 64 and gated.gate_l2.channels == 128
    depth_out = gated.eval()({"rgb": torch.randn(1, 3, 32, 32), "mask": torch.randn(1, 3, 32, 32),
                       "depth": torch.randn(1, 1, 32, 32)})
    assert depth_out["size_mm"].shape == (1, 1)

    plain = build_model("hag_resnet18", streams=("rgb", "mask", "depth"), input_size=32, width_mult=0.125, gates=False)
    assert list(plain.gate_parameters()) == []
    assert set(plain.state_dict()) == {k for k in gated.state_dict() if not k.endswith(".logit")}
    n_gate = sum(p.numel() for p in gated.gate_parameters())
    assert sum(p.numel() for p in gated.parameters()) - n_gate == sum(p.numel() for p in plain.parameters())


def test_width_mult_one_matches_resnet18_size():
    trunk = GatedResNetTrunk(width_mult=1.0, gates=False)
    # torchvision's resnet18 has 11,689,512 parameters of which fc has 513,000
    assert sum(p.numel() for p in trunk.parameters()) == 11_689_512 - 513_000


def test_trunk_features_for_the_detector():
    trunk = GatedResNetTrunk(width_mult=0.25, gates=True)
    feats = trunk.forward_features(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]


def test_vit_shapes_gates_and_streams():
    vit = build_model("hag_vit_tiny", head="both", **TINY_VIT).eval()
    out = vit({"rgb": torch.randn(2, 3, 32, 32)})
    assert out["size_mm"].shape == (2, 1) and out["logits"].shape == (2, 3)
    assert len(list(vit.gate_parameters())) == 2 * 2       # g1, g2 per block
    two = build_model("hag_vit_tiny", streams=("rgb", "mask"), **TINY_VIT)
    assert two.patch_embed.proj.in_channels == 6
    with pytest.raises(ValueError, match="built for 32x32"):
        vit({"rgb": torch.randn(1, 3, 48, 48)})
    default = build_model("hag_vit_tiny")
    assert default.init_kwargs["input_size"] == 384 and len(default.blocks) == 12
    assert default.pos_embed.shape == (1, 1 + 24 * 24, 192)


def test_gate_and_main_parameter_groups_partition_the_model():
    model = build_model("hag_resnet18", **TINY_RESNET)
    gates = {id(p) for p in model.gate_parameters()}
    main = {id(p) for p in model.main_parameters()}
    assert gates and main and not gates & main
    assert gates | main == {id(p) for p in model.parameters()}


# ---- checkpoints ----

def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("hag_resnet18", head="both", **TINY_RESNET)
    model.train()
    model({"rgb": torch.randn(4, 3, 32, 32), "mask": torch.randn(4, 3, 32, 32)})  # move BN stats
    model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5)
    metadata = {"kind": "sizer", "epoch": 3, "fold": 1, "metrics": {"frame_mae_mm": 1.25}, "git_commit": None}
    path = save_checkpoint(model, tmp_path / "run" / "best.pt", metadata,
                           training_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                           "epoch": 3})
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    loaded, meta = load_checkpoint(path)
    assert meta["architecture"] == "hag_resnet18" and meta["epoch"] == 3
    assert meta["init_kwargs"]["streams"] == ["rgb", "mask"] and meta["metrics"] == {"frame_mae_mm": 1.25}
    loaded.eval()
    x = {"rgb": torch.randn(2, 3, 32, 32), "mask": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for key in a:
        assert torch.equal(a[key], b[key])
    state = read_checkpoint(path).training_state
    assert state["epoch"] == 3 and state["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert state["scheduler"]["T_0"] == 5

    vit = build_model("hag_vit_tiny", **TINY_VIT)
    save_checkpoint(vit, tmp_path / "vit.pt", {"kind": "sizer"})
    vit_loaded, _ = load_checkpoint(tmp_path / "vit.pt")
    assert torch.equal(vit_loaded.pos_embed, vit.pos_embed)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_checkpoint_with_code_in_its_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    payload = {"format": "hagview-checkpoint", "version": 1, "metadata_json": "{}",
               "state_dict": {}, "training_state": _RunsCode(str(marker))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message
    # torch.save's pickle reaches the code reference and names it; a raw pickle is stopped
    # earlier, at an instruction the weights-only loader does not accept
    assert ("refused" in message and "could run code" in message) if writer == "torch" else "rejected" in message
    assert not marker.exists(), "the pickle's code ran"


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a hagview checkpoint"):
        load_checkpoint(other)
    with pytest.raises(ValueError, match="JSON-like"):
        save_checkpoint(build_model("hag_resnet18", **TINY_RESNET), tmp_path / "x.pt", {"bad": object()})
    assert issubclass(CheckpointError, HagviewError)


# ---- ImageNet weights from a local file ----

def _torchvision_style_resnet18_state() -> dict:
    """A state dict with torchvision's ResNet-18 names and shapes (random values)."""
    trunk = GatedResNetTrunk(width_mult=1.0, gates=False)
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
             for k, v in trunk.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 512, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


def test_resnet_imagenet_weights_load_into_every_stream(tmp_path):
    state = _torchvision_style_resnet18_state()
    assert "layer2.0.downsample.0.weight" in state and "layer1.0.bn1.running_mean" in state
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model("hag_resnet18", streams=("rgb", "mask", "depth"), input_size=64, width_mult=1.0)
    report = load_imagenet_weights(model, path)
    for stream in ("rgb", "mask"):
        assert torch.equal(model.backbones[stream].layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
        assert torch.equal(model.backbones[stream].conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.backbones["depth"].conv1.weight,
                               state["conv1.weight"].sum(dim=1, keepdim=True))
    assert report.unexpected == ["fc.bias", "fc.weight"]
    assert "gate_l1.logit" in report.missing and "fc.weight" in report.missing
    assert not any(k.startswith("backbones.rgb.layer") for k in report.missing)

    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "resnet18.safetensors"))
    again = build_model("hag_resnet18", streams=("rgb",), input_size=64)
    load_imagenet_weights(again, tmp_path / "resnet18.safetensors")
    assert torch.equal(again.backbones["rgb"].layer4[0].downsample[1].running_var,
                       state["layer4.0.downsample.1.running_var"])

    with pytest.raises(ConfigError, match="width_mult 1.0"):
        load_imagenet_weights(build_model("hag_resnet18", **TINY_RESNET), path)
    with pytest.raises(ConfigError, match="not found"):
        load_imagenet_weights(model, tmp_path / "nowhere.pth")


def test_vit_imagenet_weights_with_timm_names_and_resized_positions(tmp_path):
    dim, depth = 48, 2
    g = torch.Generator().manual_seed(1)
    state = {"patch_embed.proj.weight": torch.randn(dim, 3, 16, 16, generator=g),
             "patch_embed.proj.bias": torch.randn(dim, generator=g),
             "cls_token": torch.randn(1, 1, dim, generator=g),
             "pos_embed": torch.randn(1, 1 + 4 * 4, dim, generator=g),   # trained at 64 px
             "norm.weight": torch.randn(dim, generator=g), "norm.bias": torch.randn(dim, generator=g),
             "head.weight": torch.randn(1000, dim, generator=g), "head.bias": torch.randn(1000, generator=g)}
    for i in range(depth):
        for name, shape in [("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("attn.qkv.weight", (3 * dim, dim)),
                            ("attn.qkv.bias", (3 * dim,)), ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)),
                            ("norm2.weight", (dim,)), ("norm2.bias", (dim,)), ("mlp.fc1.weight", (4 * dim, dim)),
                            ("mlp.fc1.bias", (4 * dim,)), ("mlp.fc2.weight", (dim, 4 * dim)), ("mlp.fc2.bias", (dim,))]:
            state[f"blocks.{i}.{name}"] = torch.randn(shape, generator=g)
    path = tmp_path / "vit_tiny.pth"
    torch.save({"model": state}, path)     # some checkpoints wrap the state dict

    vit = build_model("hag_vit_tiny", streams=("rgb", "mask"), input_size=32, embed_dim=dim, depth=depth, num_heads=3)
    report = load_imagenet_weights(vit, path)
    assert torch.equal(vit.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    assert torch.equal(vit.blocks[0].mlp.fc2.bias, state["blocks.0.mlp.fc2.bias"])
    assert vit.pos_embed.shape == (1, 1 + 2 * 2, dim)
    assert torch.equal(vit.pos_embed[:, :1], state["pos_embed"][:, :1])
    # RGB patch filters spread over both streams: identical images give the pretrained response
    torch.testing.assert_close(vit.patch_embed.proj.weight, torch.cat([state["patch_embed.proj.weight"]] * 2, 1) / 2)
    assert report.unexpected == ["head.bias", "head.weight"]
    assert set(report.missing) == {n for n, _ in vit.named_gate_parameters()} | {"head.size.weight", "head.size.bias"}

    wrong = build_model("hag_vit_tiny", input_size=32, embed_dim=96, depth=depth, num_heads=3)
    with pytest.raises(ConfigError, match="embed_dim"):
        load_imagenet_weights(wrong, path)
