from pathlib import Path

import pytest

from ofgr_core.common.errors import ConfigError
from ofgr_core.config import Config, dump_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.train.epochs >= 1 and cfg.eval.ks[0] == 1


def test_every_shipped_config_validates():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        load_config(f)


def test_unknown_key_names_path_and_suggestion(tmp_path):
    p = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "train.epoch: unknown key, did you mean train.epochs?" in msg


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"trian: unknown key, did you mean train\?"):
        load_config(write(tmp_path, "trian: {}\n"))


def test_unknown_key_inside_list_item(tmp_path):
    p = write(tmp_path, "data:\n  sources:\n    - type: synthetic\n      rot: x\n")
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.rot: unknown key, did you mean data\.sources\.0\.root\?"):
        load_config(p)


def test_wrong_type_names_path_value_and_expected(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "train:\n  epochs: five\n"))
    msg = str(e.value)
    assert "train.epochs" in msg and "'five'" in msg and "integer" in msg


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(ConfigError, match="line"):
        load_config(write(tmp_path, "train:\n  epochs: [1\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/x.yaml")


def test_precedence_defaults_yaml_override(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 3\n  lr: 0.01\n")
    cfg = load_config(p, ["train.epochs=7", "eval.ks=[1,5]", "data.sources.0.root=/x"])
    assert cfg.train.epochs == 7  # override beats YAML
    assert cfg.train.lr == 0.01  # YAML beats default
    assert cfg.train.optimizer == "adamw"  # default kept
    assert cfg.eval.ks == [1, 5]
    assert cfg.data.sources[0].root == "/x"


def test_bad_override_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key, did you mean train\.epochs\?"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="no list item 3"):
        load_config(None, ["data.sources.3.root=/x"])


def test_parse_override_yaml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=hello world") == (["a"], "hello world")


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.name=test_resnet"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_builtin_defaults_are_the_demo():
    """`ofgr run` outside a checkout (no configs/demo.yaml) must run the same experiment as the demo."""
    demo = load_config(REPO / "configs" / "demo.yaml").model_dump()
    default = load_config().model_dump()
    from ofgr_core.data.synthetic import SynthOptions

    for cfg in (demo, default):
        src = cfg["data"]["sources"][0]
        src["root"] = None  # the default root is derived from the options
        src["options"] = SynthOptions(**src["options"]).model_dump()  # explicit == adapter defaults
    assert demo == default
