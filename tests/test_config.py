"""The training config: defaults, overrides, one-line errors naming the key or path."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trainer.config import DataSourceConfig, TrainConfig, config_to_dict, config_to_yaml, load_config
from pipeline.errors import ConfigError
from trainer.train import main

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_follow_the_method():
    cfg = load_config(None, ["data.kind=synthetic"])
    assert cfg.optim.main.name == "adam" and cfg.optim.main.lr == 2e-4 and cfg.optim.main.clip == 8.0
    assert cfg.optim.main.schedule.kind == "cosine_warm_restarts"
    assert cfg.optim.gates.lr == 3e-4 and cfg.optim.gates.schedule.kind == "none"
    assert (cfg.loss.weight_above_5, cfg.loss.weight_at_10) == (3.0, 5.0)
    assert (cfg.routing.loss.weight_above_5, cfg.routing.loss.weight_at_10) == (5.0, 10.0)
    assert cfg.routing.enabled and not cfg.routing.reference_accumulation
    assert (cfg.data.train_per_polyp, cfg.data.val_per_polyp, cfg.data.folds) == (45, 300, 6)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["data.kind=synthetic", "model.width_mult=0.5", "data.input.streams=[rgb]"])
    again = load_config(write(tmp_path, config_to_yaml(cfg)))
    assert config_to_dict(again) == config_to_dict(cfg)   # the name is kept, not the file's
    assert again.data.input.streams == ("rgb",)


def test_overrides_are_yaml_scalars(tmp_path):
    path = write(tmp_path, "data: {kind: synthetic}\noptim: {main: {lr: 1.0e-3}}\n")
    cfg = load_config(path, ["optim.main.lr=2e-4", "model.gates=false", "routing.enabled=false", "train.steps_per_epoch=null",
                             "data.input.mean=[0.5, 0.5, 0.5]", "model.kwargs.dropout=0.1", "name=x"])
    assert cfg.optim.main.lr == pytest.approx(2e-4)      # `2e-4` is a string to YAML 1.1; accepted
    assert cfg.model.gates is False and cfg.train.steps_per_epoch is None
    assert cfg.data.input.mean == (0.5, 0.5, 0.5) and cfg.model.kwargs == {"dropout": 0.1}
    assert cfg.name == "x"
    assert load_config(path).name == "c"


# the data kinds as the schema lists them (readers are added over time)
KINDS = ", ".join(next(f for f in dataclasses.fields(DataSourceConfig) if f.name == "kind").metadata["choices"])


@pytest.mark.parametrize("overrides, message", [
    (["optim.main.lr=fast"], "config key 'optim.main.lr': expected a number, got 'fast'"),
    (["model.widht=2"], "unknown config key 'model.widht' (did you mean 'model.width_mult'?)"),
    (["trian.epochs=2"], "unknown config key 'trian' (did you mean 'train'?)"),
    (["train.epochs=2.5"], "config key 'train.epochs': expected an integer, got 2.5"),
    (["model.gates=yes please"], "config key 'model.gates': expected true or false, got 'yes please'"),
    (["data.kind=video"], f"config key 'data.kind': expected one of {KINDS}; got 'video'"),
    (["data.input.mean=[1, 2]"], "config key 'data.input.mean': expected a list of 3 values, got 2"),
    (["data.input.streams=[rgb, depht]"], "config key 'data.input.streams': unknown stream 'depht'"),
    (["train.batch_size=0"], "config key 'train.batch_size': must be positive, got 0"),
    (["train.threads=0"], "config key 'train.threads': must be 1 or more, got 0"),
    (["data.fold=6"], "config key 'data.fold': 6 is not a fold of 0..5"),
    (["optim=3"], "config key 'optim': expected a section (mapping), got 3"),
    (["optim.main.lr"], "--set 'optim.main.lr': expected key=value"),
    (["train.device=tpu"], "config key 'train.device': expected auto, cpu, cuda or cuda:N, got 'tpu'"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.kind=synthetic", *overrides])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'data.root': required for data.kind 'realcolon'"):
        load_config(None)
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=rf"config key 'data.root': path does not exist: {missing}"):
        load_config(None, [f"data.root={missing}"])
    with pytest.raises(ConfigError, match=r"config key 'model.pretrained': path does not exist"):
        load_config(None, ["data.kind=synthetic", f"model.pretrained={missing}.pth"])
    with pytest.raises(ConfigError, match=r"config key 'data.split_file': path does not exist"):
        load_config(None, ["data.kind=synthetic", f"data.split_file={missing}.yaml"])
    with pytest.raises(ConfigError, match=r"config key 'test.root': required"):
        load_config(None, ["data.kind=synthetic", "test.enabled=true"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+ expected"):
        load_config(write(tmp_path, "model:\n  name: [unclosed\n"))
    with pytest.raises(ConfigError, match="a config is a mapping of sections, got list"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("text, needle", [
    ("data: {kind: synthetic}\nmodel: {widht: 2}\n", "unknown config key 'model.widht' (did you mean 'model.width_mult'?)"),
    ("data: {kind: synthetic}\noptim: {main: {lr: fast}}\n", "config key 'optim.main.lr': expected a number, got 'fast'"),
    ("data: {kind: realcolon, root: /does/not/exist}\n", "config key 'data.root': path does not exist: /does/not/exist"),
    ("data: {kind: synthetic}\nmodel: {kwargs: {depth: 50}}\n", "unknown argument 'depth'"),
    ("data: {kind: synthetic}\ntask_options: {heatmap: 2}\n", "config key 'task_options.heatmap'"),
])
def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys, text, needle):
    code = main(["--config", str(write(tmp_path, text)), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("hagview-train: error: ") and len(err.splitlines()) == 1
    assert needle in err
    assert not (tmp_path / "run").exists()   # nothing written for a config that cannot run


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "train").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / "train" / name, check_paths=False)
    assert isinstance(cfg, TrainConfig) and cfg.name == Path(name).stem


def test_model_settings_reach_the_model_or_fail_by_key():
    from trainer.tasks import build_task

    base = ["data.kind=synthetic", "model.name=hag_vit_tiny", "data.input.size=64", "data.input.streams=[rgb]"]
    vit = build_task(load_config(None, base)).build_model()
    assert vit.init_kwargs["input_size"] == 64 and list(vit.input_names) == ["rgb"]
    with pytest.raises(ConfigError, match=r"config key 'model.width_mult': model 'hag_vit_tiny' has no width_mult"):
        build_task(load_config(None, [*base, "model.width_mult=0.5"])).build_model()
    cnn = build_task(load_config(None, ["data.kind=synthetic", "model.width_mult=0.25", "model.hidden=24",
                                        "model.head=both", "model.num_classes=2"])).build_model()
    assert cnn.init_kwargs["width_mult"] == 0.25 and cnn.init_kwargs["hidden"] == 24
    assert tuple(cnn.output_names) == ("size_mm", "logits")
    with pytest.raises(ConfigError, match=r"config key 'train.primary_metric': unknown sizer metric 'f1'"):
        build_task(load_config(None, ["data.kind=synthetic", "train.primary_metric=f1"]))
