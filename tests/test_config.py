"""One flag set for both sides: defaults, YAML round trip, precedence, one-line errors."""


import pytest

from common.config import TrainConfig, build_parser, parse_config, save_yaml
from common.sides import SIDES
from tests.helpers.in_process import run_main

def test_defaults_reproduce_the_paper_recipe():
    c = parse_config("lightning", [])
    assert (c.model, c.dataset, c.batch_size, c.lr, c.momentum, c.weight_decay) == \
        ("resnet20", "cifar10", 128, 0.1, 0.9, 1e-4)
    assert c.schedule == "multistep" and c.milestones == [0.5, 0.75]
    # 182 epochs of 45,000 / 128 = 351 full batches: 63,882 steps, the paper's "64k iterations".
    assert c.epochs * (45_000 // 128) == pytest.approx(64_000, rel=0.003)
    assert c.run_name == "resnet20-cifar10" and c.logdir == "logs" and c.precision == "auto"


def test_both_sides_parse_the_same_flags():
    def flags(side):
        return sorted((a.dest, a.default, tuple(a.choices or ())) for a in build_parser(side)._actions)
    assert flags("lightning") == flags("flax")


def test_yaml_round_trip_and_command_line_precedence(tmp_path):
    config = parse_config("flax", ["--model", "resnet56", "--lr", "0.05", "--no-nesterov",
                                   "--milestones", "0.3", "0.6", "--limit-train-batches", "4"])
    path = tmp_path / "run.yaml"
    save_yaml(config, path)
    assert parse_config("lightning", ["--config", str(path)]) == config
    overridden = parse_config("lightning", ["--config", str(path), "--lr", "0.2"])
    assert overridden.lr == 0.2 and overridden.model == "resnet56" and overridden.nesterov is False


def test_yaml_values_are_converted_like_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("weight-decay: 5e-4\nepochs: 3\nlr: 1\nmilestones: [0.5]\n")
    c = parse_config("flax", ["--config", str(path)])
    assert c.weight_decay == 5e-4 and isinstance(c.lr, float) and c.epochs == 3


@pytest.mark.parametrize("argv,needle", [
    (["--model", "resnet21"], "--model"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--precision", "fp8"], "--precision"),
    (["--milestones", "0.8", "0.2"], "--milestones"),
    (["--config", "/no/such/file.yaml"], "does not exist"),
    (["--num-nodes", "0"], "--num-nodes must be a positive integer"),
    (["--num-nodes", "2", "--node-rank", "2"], "--node-rank must be in 0..1"),
    (["--coordinator-address", "node0"], "--coordinator-address must be HOST:PORT"),
    (["--coordinator-address", "node0:99999"], "--coordinator-address must be HOST:PORT"),
    (["--batch-size", "30", "--devices", "2", "--num-nodes", "2"], "choose a multiple of 4"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config("lightning", argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and "Traceback" not in "".join(err)


def test_malformed_and_unknown_yaml_keys(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 0.1\n")
    for path, needle in ((bad, "not valid YAML"), (unknown, "unknown key 'learning_rate'")):
        with pytest.raises(SystemExit):
            parse_config("flax", ["--config", str(path)])
        assert needle in capsys.readouterr().err


@pytest.mark.parametrize("side", SIDES)
def test_train_py_help_lists_the_flags(side):
    """(Both files run as scripts in the reference runs, tests/conftest.py.)"""
    done = run_main(side, ["--help"])
    out = done.stdout
    assert done.returncode == 0
    assert out.startswith(f"usage: python {side}_side/train.py")
    for flag in ("--model", "--dataset", "--precision", "--resume", "--init-from", "--config"):
        assert flag in out
    assert "digits" in out


def test_config_is_a_plain_dataclass_with_every_documented_flag():
    names = set(TrainConfig.__dataclass_fields__)
    assert {"model", "dataset", "data_dir", "epochs", "batch_size", "lr", "momentum", "nesterov",
            "weight_decay", "schedule", "milestones", "warmup_epochs", "label_smoothing",
            "precision", "seed", "logdir", "run_name", "resume", "init_from", "devices",
            "num_workers", "log_every", "limit_train_batches", "limit_val_batches", "limit_test_batches", "num_nodes",
            "node_rank", "coordinator_address"} <= names
