"""Tests of trlsim.config: parsing, defaults, resolution and error messages."""

import dataclasses
import json
import os

import pytest

from trlsim.config import (
    KEY_TABLE,
    Config,
    ConfigError,
    DataConfig,
    NetworkConfig,
    load_config,
    parse_config,
    reference_markdown,
    settings_to_config,
)

FULL = """\
[network]
hidden = [300, 200, 100]
activation = "gelu"

[rule]
rule = "trl"
c_sim = 0.5
c_var = 4
c_cov = 1.5
c_lat = 1.0
tau = 0.8
cov_sparsity = 0.5
lateral = "direct"
lateral_learning_rate = 1e-3
var_momentum = 0.99

[optimizer]
optimizer = "sgd"
learning_rate = 4e-4
betas = [0.8, 0.99]
eps = 1e-6
momentum = 0.5
weight_decay = 1e-5

[data]
dataset = "digits"
batch_size = 32
chunk_size = 8
coherence = 0.5
order = "natural"
train_limit = 1000
test_limit = 200

[training]
epochs = 3
schedule = "concurrent"
train_layers = [0, 2]
seed = 42
threads = 4
backend = "cpu"

[probe]
enabled = false
epochs = 5
learning_rate = 1e-3
batch_size = 128
layers = "all"
baseline = false

[output]
dir = "out/run1"
"""


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text, name="bad.toml"):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text, name))
    return str(info.value)


def test_defaults_parse():
    config = parse_config({})
    assert config.network == NetworkConfig()
    assert config.network.hidden == (512, 256)
    assert config.rule.rule == "trl-s"
    assert config.rule.c_var == 2.5
    assert config.rule.lateral_learning_rate == config.optimizer.learning_rate
    assert config.training.schedule == "concurrent"
    assert config.training.train_layers is None
    assert config.probe.epochs == config.training.epochs == 60
    assert config.data == DataConfig()
    assert config.output.dir is None


def test_empty_file_parses(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.to_dict() == parse_config({}).to_dict()


def test_full_file_round_trips(tmp_path):
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config.source == str(path)
    assert config.text == FULL
    assert config.network.hidden == (300, 200, 100)
    assert config.rule.c_var == 4.0 and isinstance(config.rule.c_var, float)
    assert config.optimizer.betas == (0.8, 0.99)
    assert config.training.train_layers == (0, 2)
    assert config.probe.layers is None
    assert config.output.dir == "out/run1"

    plain = config.to_dict()
    assert json.loads(json.dumps(plain)) == plain
    assert plain["network"]["hidden"] == [300, 200, 100]
    again = parse_config(plain, source=config.source)
    assert dataclasses.replace(again, text=config.text) == config


@pytest.mark.parametrize(
    "rule, c_var, schedule", [("trl", 5.0, "greedy"), ("trl-s", 2.5, "concurrent")]
)
def test_rule_dependent_defaults(rule, c_var, schedule):
    config = parse_config({"rule": {"rule": rule}})
    assert config.rule.c_var == c_var
    assert config.training.schedule == schedule


def test_explicit_values_beat_rule_defaults():
    config = parse_config(
        {"rule": {"rule": "trl", "c_var": 1.0}, "training": {"schedule": "concurrent"}}
    )
    assert config.rule.c_var == 1.0
    assert config.training.schedule == "concurrent"


def test_int_accepted_as_float():
    config = parse_config({"optimizer": {"learning_rate": 1}})
    assert config.optimizer.learning_rate == 1.0
    assert isinstance(config.optimizer.learning_rate, float)


@pytest.mark.parametrize(
    "text, table, key, value, expect",
    [
        ('[data]\nbach_size = 32\n', "[data]", "bach_size", "bach_size",
         "did you mean 'batch_size'?"),
        ('[data]\nseed = 3\n', "[data]", "seed", "seed", "is a key of [training]"),
        ("[optimizer]\nlearning_rate = 'fast'\n", "[optimizer]", "learning_rate",
         "'fast'", "expected a number, got str"),
        ("[training]\nepochs = true\n", "[training]", "epochs", "True",
         "expected an integer, got bool"),
        ("[rule]\nc_sim = true\n", "[rule]", "c_sim", "True",
         "expected a number, got bool"),
        ("[training]\nepochs = 2.5\n", "[training]", "epochs", "2.5",
         "expected an integer, got float"),
        ("[probe]\nenabled = 1\n", "[probe]", "enabled", "1",
         "expected true or false"),
        ("[network]\nhidden = 512\n", "[network]", "hidden", "512",
         "expected a list"),
        ("[network]\nhidden = []\n", "[network]", "hidden", "[]", "at least 1"),
        ("[network]\nhidden = [512, -3]\n", "[network]", "hidden", "-3",
         "each value must be >= 1"),
        ("[network]\nactivation = 'relux'\n", "[network]", "activation", "'relux'",
         "one of 'relu', 'tanh'"),
        ("[rule]\nc_var = -1.0\n", "[rule]", "c_var", "-1.0", "must be >= 0"),
        ("[rule]\ncov_sparsity = 1.0\n", "[rule]", "cov_sparsity", "1.0",
         "must be in [0, 1)"),
        ("[rule]\ntau = inf\n", "[rule]", "tau", "inf", "finite"),
        ("[data]\ncoherence = 1.5\n", "[data]", "coherence", "1.5",
         "must be in [0, 1]"),
        ("[optimizer]\nbetas = [0.9]\n", "[optimizer]", "betas", "[0.9]",
         "expected 2 values"),
        ("[optimizer]\nlearning_rate = 0\n", "[optimizer]", "learning_rate", "0",
         "must be > 0"),
        ("[rule]\nrule = 'trl'\n[data]\nbatch_size = 60\n", "[data]", "batch_size",
         "60", "must be a multiple of chunk_size (16) for rule 'trl'"),
        ("[rule]\nrule = 'trl'\n[data]\nchunk_size = 1\n", "[data]", "chunk_size",
         "1", "must be >= 2 for rule 'trl'"),
        ("[data]\ntrain_limit = 10\n", "[data]", "train_limit", "10",
         "must be >= batch_size (64)"),
        ("[training]\ntrain_layers = [0, 2]\n", "[training]", "train_layers",
         "[0, 2]", "layer 2 out of range"),
        ("[training]\ntrain_layers = [1, 1]\n", "[training]", "train_layers",
         "[1, 1]", "appears twice"),
        ("[training]\ntrain_layers = 'some'\n", "[training]", "train_layers",
         "'some'", '"all"'),
        ("[probe]\nlayers = [5]\n", "[probe]", "layers", "[5]", "out of range"),
    ],
)  # fmt: skip
def test_bad_values_name_file_table_key_and_value(
    tmp_path, text, table, key, value, expect
):
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "bad.toml") + ": ")
    for part in (table, key, value, expect):
        assert part in message


def test_unknown_key_lists_valid_keys(tmp_path):
    message = error_of(tmp_path, "[data]\nbach_size = 32\n")
    assert "unknown key 'bach_size'" in message
    assert "Valid keys: dataset, path, batch_size, chunk_size" in message


def test_unknown_table_suggests(tmp_path):
    message = error_of(tmp_path, "[netwrk]\nhidden = [4]\n")
    assert "bad.toml" in message
    assert "unknown table [netwrk]; did you mean [network]?" in message
    assert "Valid tables: network, rule" in message


def test_key_outside_any_table(tmp_path):
    message = error_of(tmp_path, "seed = 3\n")
    assert "bad.toml: unknown table [seed]; 'seed' is a key of [training]." in message


def test_trl_s_accepts_any_batch_size():
    config = parse_config({"rule": {"rule": "trl-s"}, "data": {"batch_size": 60}})
    assert config.data.batch_size == 60


def test_empty_train_layers_means_none_learn():
    for given, expect in (([], ()), ("all", None), ([1], (1,))):
        config = parse_config({"training": {"train_layers": given}})
        assert config.training.train_layers == expect


def test_missing_file(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_invalid_toml(tmp_path):
    message = error_of(tmp_path, "[data\nbatch_size = 3\n")
    assert "bad.toml: not valid TOML:" in message


def test_missing_data_path_names_resolved_path(tmp_path):
    message = error_of(tmp_path, '[data]\npath = "nowhere"\n')
    assert "[data] path = 'nowhere'" in message
    assert str(tmp_path / "nowhere") in message and "does not exist" in message


def test_data_path_that_is_a_file(tmp_path):
    write(tmp_path, "", "file.idx")
    assert "is not a directory" in error_of(tmp_path, '[data]\npath = "file.idx"\n')


def test_relative_data_path_resolved_against_config_folder(tmp_path, monkeypatch):
    (tmp_path / "configs" / "mnist").mkdir(parents=True)
    path = write(tmp_path / "configs", '[data]\npath = "mnist"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(os.path.join("configs", "run.toml"))
    assert config.data.path == str((tmp_path / "configs" / "mnist").resolve())
    # The resolved path survives replace(), whatever the working directory.
    monkeypatch.chdir(path.parent.parent.parent)
    assert config.replace(**{"training.epochs": 2}).data.path == config.data.path


def test_replace_with_dotted_keys(tmp_path):
    config = load_config(write(tmp_path, FULL))
    changed = config.replace(
        **{"training.epochs": 7, "training.seed": 1, "output.dir": "x"}
    )
    assert (changed.training.epochs, changed.training.seed) == (7, 1)
    assert changed.output.dir == "x"
    assert changed.probe.epochs == 5
    assert changed.source == config.source and changed.text == config.text
    assert config.training.epochs == 3


def test_replace_reresolves_rule_defaults():
    config = parse_config({})
    changed = config.replace(**{"rule.rule": "trl"})
    assert changed.rule.c_var == 5.0
    assert changed.training.schedule == "greedy"
    assert changed.probe.epochs == 60
    assert Config().replace(**{"training.epochs": 2}).probe.epochs == 2


@pytest.mark.parametrize(
    "overrides, expect",
    [
        ({"training.epochs": 0}, "x.toml: [training] epochs = 0: must be >= 1"),
        ({"training.epoch": 3}, "did you mean 'epochs'?"),
        ({"trainin.epochs": 3}, "did you mean [training]?"),
        ({"epochs": 3}, "must be written 'table.key'"),
        ({"network.hidden": [4]}, "[training] train_layers = [0, 1]"),
    ],
)
def test_replace_validates(overrides, expect):
    config = parse_config({"training": {"train_layers": [0, 1]}}, source="x.toml")
    with pytest.raises(ConfigError) as info:
        config.replace(**overrides)
    assert expect in str(info.value)


def test_settings_to_config_routes_keywords():
    config = settings_to_config(
        {
            "rule": "trl",
            "seed": 3,
            "learning_rate": 1e-3,
            "optimizer": "sgd",
            "momentum": 0.5,
            "hidden": (8, 4),
            "chunk_size": 8,
            "train_layers": [0],
            "backend": "cpu",
            "c_var": None,
        }
    )
    assert config.source == "Network()"
    assert config.rule.rule == "trl" and config.rule.c_var == 5.0
    assert config.training.seed == 3 and config.training.train_layers == (0,)
    assert config.optimizer.learning_rate == 1e-3
    assert config.optimizer.optimizer == "sgd" and config.optimizer.momentum == 0.5
    assert config.network.hidden == (8, 4) and config.data.chunk_size == 8
    assert config.training.backend == "cpu"


def test_settings_to_config_rejects_unknown_keyword():
    with pytest.raises(ConfigError) as info:
        settings_to_config({"learning_rat": 1e-3})
    message = str(info.value)
    assert message.startswith("Network(): unknown setting 'learning_rat'")
    assert "did you mean 'learning_rate'?" in message
    with pytest.raises(
        ConfigError, match=r"'epochs' is a key of \[training\], \[probe\]"
    ):
        settings_to_config({"epochs": 3})


def test_settings_to_config_bad_value_names_source():
    with pytest.raises(ConfigError, match=r"Network\(\): \[rule\] tau = -1"):
        settings_to_config({"tau": -1})


def test_key_table_covers_network_keywords():
    for key in ("hidden", "rule", "c_var", "betas", "weight_decay"):
        assert key in KEY_TABLE
    assert KEY_TABLE["chunk_size"] == "data"
    assert {KEY_TABLE[k] for k in ("seed", "train_layers", "backend")} == {"training"}
    assert "epochs" not in KEY_TABLE


def test_reference_mentions_every_key():
    text = reference_markdown()
    for table, keys in parse_config({}).to_dict().items():
        assert f"## [{table}]" in text
        for key in keys:
            assert f"| `{key}` |" in text


def test_class_docstrings_list_every_field():
    for name, field in Config.__dataclass_fields__.items():
        if name in ("source", "text", "given"):
            continue
        doc = field.default_factory.__doc__
        assert "Attributes\n----------" in doc
        for sub in dataclasses.fields(field.default_factory):
            assert f"{sub.name} : " in doc


def test_configuration_doc_is_generated_from_the_metadata():
    from pathlib import Path

    from trlsim.config import reference_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text().strip() == reference_markdown().strip(), (
        "docs/configuration.md is stale: regenerate it with "
        "`trlsim config-reference > docs/configuration.md`"
    )
