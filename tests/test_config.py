"""Config: YAML + --set into typed dataclasses, strict keys, one-line errors, shipped YAMLs load."""

from pathlib import Path

import pytest
import yaml

from ganscale.config import STUDY_Z_SIGMA, Config, ConfigError, load_config, save_config, valid_keys
from ganscale.train.plan import d_norm_of

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert isinstance(cfg, Config)


def test_shipped_configs_are_the_documented_set():
    assert {p.stem for p in CONFIGS} >= {"dcgan", "acgan", "wgan-gp", "quickstart", "tiny"}


def test_study_defaults():
    cfg = load_config("configs/acgan.yaml")
    assert cfg.model.z_sigma == pytest.approx(0.72737734929)
    assert pytest.approx(0.72737734929) == STUDY_Z_SIGMA
    assert cfg.model.conditional and cfg.model.head == "separate" and cfg.model.head_layers == 3
    assert cfg.data.source == "synthetic" and cfg.data.hflip and cfg.data.rotate_degrees > 0
    assert load_config("configs/dcgan.yaml").model.arch == "dcgan"


def test_set_overrides_are_typed_and_repeatable():
    cfg = load_config(
        "configs/acgan.yaml", ["train.batch_size=128", "optim.g_lr=1e-3", "train.mixed_precision=no"]
    )
    assert cfg.train.batch_size == 128
    assert cfg.optim.g_lr == pytest.approx(1e-3)
    assert cfg.train.mixed_precision == "no"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.batchsize=3", "did you mean train.batch_size"),
        ("batch_size=3", "did you mean train.batch_size"),
        ("modle.arch=dcgan", "did you mean model"),
        ("train.batch_size=abc", "train.batch_size: expected int"),
        ("train.batch_size=-4", "train.batch_size: must be > 0"),
        ("loss.adversarial=hing", "did you mean 'hinge'"),
        ("model.image_size=48", "model.image_size"),
        ("data.path=/x", "data.source=shards"),
        ("train.max_steps", "expected KEY=VALUE"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_wgan_gp_forbids_batchnorm_in_d():
    with pytest.raises(ConfigError, match="model.d_norm"):
        load_config("configs/wgan-gp.yaml", ["model.d_norm=batch"])
    assert d_norm_of(load_config("configs/wgan-gp.yaml")) == "none"
    assert d_norm_of(load_config("configs/acgan.yaml")) == "batch"


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml line"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/acgan.yaml", ["train.batch_size=32"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["batch_size"] == 32


def test_valid_keys_lists_dotted_names():
    keys = valid_keys()
    for k in (
        "train.max_steps",
        "train.batch_size",
        "checkpoint.every",
        "data.path",
        "data.source",
        "backend",
    ):
        assert k in keys


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.batch_size=true", "train.batch_size: expected int, got True"),
        ("data.hflip=1", "data.hflip: expected bool, got 1"),
        ("train.batch_size=3.5", "train.batch_size: expected int, got 3.5"),
    ],
)
def test_yaml_values_are_not_coerced_loosely(override, needle):
    # what pydantic's lax mode would accept (see ganscale/config/load.py)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("configs/tiny.yaml", [override])


def test_yaml_1_1_quirks_are_read_as_meant(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 2\n  mixed_precision: no\noptim:\n  g_lr: 2e-4\nlog:\n")
    cfg = load_config(path)
    assert cfg.optim.g_lr == pytest.approx(2e-4) and cfg.train.mixed_precision == "no"
    assert cfg.log.every == Config().log.every  # an empty section keeps its defaults


@pytest.mark.parametrize("penalty", ["r1", "dragan"])
def test_sync_batchnorm_with_a_double_backward_penalty_keeps_batchnorm_out_of_d(penalty):
    """SyncBatchNorm has no double backward (issue 21, item 4): d_norm auto resolves to none
    there, an explicit batch is refused in one line naming what works."""
    base = ["train.sync_batchnorm=true", f"loss.penalty={penalty}"]
    from ganscale.train.plan import d_norm_of

    assert d_norm_of(load_config("configs/tiny.yaml", base)) == "none"
    assert d_norm_of(load_config("configs/tiny.yaml", [f"loss.penalty={penalty}"])) == "batch"
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", [*base, "model.d_norm=batch"])
    assert "\n" not in str(e.value) and "SyncBatchNorm has no double backward" in str(e.value)
    assert "model.d_norm=auto" in str(e.value)
