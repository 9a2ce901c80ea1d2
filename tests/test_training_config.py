"""Training config: TOML loading, flags over the file, resume overrides, bad values."""

from __future__ import annotations

import pytest

from engine.training.config import TrainConfig, load_config
from engine.training.errors import TrainingError
from training_cli.commands.train import resolve_config
from training_cli.main import build_parser


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_flags_override_the_toml_and_unset_flags_do_not(tmp_path):
    toml = _write(
        tmp_path / "run.toml",
        '[train]\npreset = "tiny"\ndata = ["scans"]\nout = "runs/a"\nepochs = 7\nbatch-size = 3\nlr = 1e-4\n',
    )
    args = build_parser().parse_args(["train", "--config", str(toml), "--epochs", "2", "--ema-decay", "0.99"])
    config = resolve_config(args)
    assert config.epochs == 2  # flag wins
    assert config.ema_decay == 0.99
    assert config.batch_size == 3  # file value kept: the flag was not given
    assert config.lr == 1e-4
    assert config.grad_accum == TrainConfig.grad_accum  # default: in neither
    # Relative paths in the file are relative to the file, not to the working directory.
    assert config.data == [str(tmp_path / "scans")]
    assert config.out == str(tmp_path / "runs" / "a")


def test_config_round_trips_through_its_toml(tmp_path):
    config = load_config(None, {"preset": "tiny", "data": ["/d1", "/d2"], "out": "/r", "lr": 3e-5, "seed": 9})
    path = _write(tmp_path / "config.toml", config.to_toml())
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('data = ["x"]\nout = "r"\nbatchsize = 2\n', "unknown key 'batchsize'"),
        ('data = ["x"]\nout = "r"\nepochs = "ten"\n', "epochs must be a whole number"),
        ('data = ["x"]\nout = "r"\nepochs = 0\n', "epochs must be a whole number of at least 1"),
        ('data = ["x"]\nout = "r"\nprecision = "fp8"\n', "unknown precision 'fp8'"),
        ('data = ["x"]\nout = "r"\nval-fraction = 1.5\n', "val-fraction must be in [0, 1)"),
        ('data = ["x"]\nout = "r"\nfreeze-encoder-levels = 1\n', "only makes sense with --init-from"),
        ('data = ["x"\n', "is not valid TOML"),
        ('out = "r"\n', "no training data given"),
    ],
)
def test_bad_config_values_give_clear_errors(tmp_path, text, message):
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(TrainingError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(path)


def test_resume_refuses_options_that_would_change_the_steps(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(None, {"preset": "tiny", "data": ["/d"], "out": str(run_dir), "batch_size": 2})
    (run_dir / "config.toml").write_text(config.to_toml())
    args = build_parser().parse_args(["train", "--resume", str(run_dir), "--epochs", "9", "--lr", "1e-5"])
    resumed = resolve_config(args)
    assert (resumed.epochs, resumed.lr, resumed.batch_size) == (9, 1e-5, 2)
    args = build_parser().parse_args(["train", "--resume", str(run_dir), "--batch-size", "4"])
    with pytest.raises(TrainingError, match="--batch-size cannot change when resuming"):
        resolve_config(args)
    # Repeating the saved value is harmless.
    args = build_parser().parse_args(["train", "--resume", str(run_dir), "--batch-size", "2"])
    assert resolve_config(args).batch_size == 2


def test_resume_of_a_folder_without_a_run(tmp_path):
    args = build_parser().parse_args(["train", "--resume", str(tmp_path)])
    with pytest.raises(TrainingError, match="holds no training run"):
        resolve_config(args)
