"""Recipes load into typed dataclasses; overrides are typed; mistakes name the key; the CLI exits 2."""

from pathlib import Path

import pytest

from latentdiff.cli import main
from latentdiff.training.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_recipes_load(recipe):
    cfg = load_config(CONFIGS / recipe)
    assert cfg.train.max_steps > 0 and cfg.data.resolution > 0


def test_overrides_are_typed_and_win_over_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  max_steps: 10\n  learning_rate: 1e-4\n")
    cfg = load_config(tmp_path / "c.yaml", ["--train.max_steps=20", "train.snr_gamma=5", "data.flip=true",
                                            "lora.target_modules=[to_q, to_v]", "train.ema_decay=null"])
    assert cfg.train.max_steps == 20 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.snr_gamma == 5.0 and cfg.data.flip is True and cfg.train.ema_decay is None
    assert cfg.lora.target_modules == ["to_q", "to_v"]
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_yaml_words_that_look_like_booleans_stay_strings_in_string_keys(tmp_path):
    """`mixed_precision: no` is YAML for false; the key is a string, so it means "no" (as in accelerate)."""
    (tmp_path / "c.yaml").write_text("train:\n  mixed_precision: no\n")
    assert load_config(tmp_path / "c.yaml").train.mixed_precision == "no"
    assert load_config(None, ["--train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(None, ["--train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


@pytest.mark.parametrize("overrides,message", [
    (["train.max_step=3"], "unknown config key 'train.max_step'"),
    (["trian.max_steps=3"], "unknown config section 'trian'"),
    (["train.max_steps=many"], "config key train.max_steps='many' must be of type int"),
    (["data.flip=maybe"], "config key data.flip='maybe' must be of type bool"),
    (["max_steps"], "must look like --section.key=value"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("argv,message", [
    (["train", "--config", "/nope.yaml"], "cannot read config '/nope.yaml'"),
    (["train", "--train.max_steps=3"], "model.pretrained is required"),
    (["train", "--model.pretrained=MODEL", "--data.root=/no/such/folder"], "/no/such/folder"),
    (["train", "--model.pretrained=MODEL", "--data.root=EMPTY"], "no usable"),
    (["train", "--model.pretrained=/no/model", "--data.root=EMPTY"], "model '/no/model' does not exist"),
    (["train", "--model.pretrained=MODEL", "--data.root=EMPTY", "--train.mixed_precision=fp8"],
     "train.mixed_precision='fp8' is not supported"),
    (["train", "--model.pretrained=MODEL", "--data.root=DATA", "--data.crop=random", "--train.output_dir=OUT"],
     "data.crop=random cannot use the latent cache"),
    (["train", "--model.pretrained=MODEL", "--data.root=DATA", "--train.output_dir=OUT", "--resume=/x/y"],
     "--resume '/x/y' is not a complete checkpoint folder"),
])
def test_train_cli_mistakes_exit_2_with_one_line(argv, message, tiny_models, tmp_path, capsys):
    from latentdiff.shapes import render_dataset

    (tmp_path / "empty").mkdir()
    render_dataset(tmp_path / "data", 2, seed=0)
    swap = {"MODEL": str(tiny_models[("epsilon", 8)]), "EMPTY": str(tmp_path / "empty"),
            "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out")}
    argv = [a.replace(k, v) if "=" in a else swap.get(a, a) for a in argv for k, v in [next(
        ((k, v) for k, v in swap.items() if k in a), ("", ""))]]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
