"""Training validates every config value before any side effect: a refused run leaves nothing behind.

Also: overlong captions are reported by their start and length, not their whole text."""

import logging

import pytest
import yaml

import latentdiff.training.train as training
from latentdiff.training.config import load_config
from latentdiff.training.train import train
from latentdiff.training.validate import validate


def make_config(tmp_path, model, data, *overrides):
    """A small valid run (as in test_train.py), then ``section.key=value`` overrides."""
    base = [f"model.pretrained={model}", f"data.root={data}", "data.resolution=64",
            f"train.output_dir={tmp_path / 'run'}", "train.batch_size=2", "train.max_steps=4",
            "train.checkpoint_every=2", "train.learning_rate=1e-3", "train.ema_decay=0.9",
            "train.progress=false", "train.lr_scheduler=constant_with_warmup", "train.lr_warmup_steps=2"]
    return load_config(None, base + list(overrides))


@pytest.fixture
def no_side_effects(monkeypatch):
    """Fail the test if train() gets as far as starting Accelerate or loading a model."""
    def forbidden(*args, **kwargs):
        raise AssertionError("train() went past validation")

    monkeypatch.setattr(training, "make_accelerator", forbidden)
    monkeypatch.setattr(training, "load_components", forbidden)


BAD = [  # (the key the message must name, overrides; FILE: an existing file, TMP: the test's folder)
    ("train.learning_rate", ["train.learning_rate=0"]),
    ("train.learning_rate", ["train.learning_rate=-1"]),
    ("train.learning_rate", ["train.learning_rate=.nan"]),
    ("train.learning_rate", ["train.learning_rate=.inf"]),
    ("train.snr_gamma", ["train.snr_gamma=0"]),
    ("data.root", ["data.root=TMP/nowhere"]),
    ("data.root", ["data.root=FILE"]),
    ("model.pretrained", ["model.pretrained=TMP/no-model"]),
    ("model.pretrained", ["model.pretrained=TMP"]),  # a folder, but not a model
    ("lora.rank", ["lora.enabled=true", "lora.rank=0"]),
    ("lora.alpha", ["lora.enabled=true", "lora.alpha=0"]),
    ("lora.target_modules", ["lora.enabled=true", "lora.target_modules=[]"]),
    ("train.ema_decay", ["train.ema_decay=1.5"]),
    ("train.lr_scheduler", ["train.lr_scheduler=bogus"]),
    ("train.lr_scheduler", ["train.lr_scheduler=piecewise_constant"]),
    ("train.max_steps", ["train.max_steps=0"]),
    ("train.batch_size", ["train.batch_size=0"]),
    ("train.gradient_accumulation_steps", ["train.gradient_accumulation_steps=0"]),
    ("train.checkpoint_every", ["train.checkpoint_every=0"]),
    ("train.keep_checkpoints", ["train.keep_checkpoints=-1"]),
    ("train.log_every", ["train.log_every=0"]),
    ("train.validate_every", ["train.validate_every=-1"]),
    ("train.validation_steps", ["train.validate_every=2", "train.validation_prompts=[a red circle]",
                                "train.validation_steps=0"]),
    ("train.lr_warmup_steps", ["train.lr_warmup_steps=-1"]),
    ("train.adam_beta1", ["train.adam_beta1=1.0"]),
    ("train.adam_beta2", ["train.adam_beta2=-0.1"]),
    ("train.adam_epsilon", ["train.adam_epsilon=0"]),
    ("train.adam_weight_decay", ["train.adam_weight_decay=-0.01"]),
    ("train.max_grad_norm", ["train.max_grad_norm=-1"]),
    ("train.noise_offset", ["train.noise_offset=-0.1"]),
    ("train.caption_dropout", ["train.caption_dropout=1.0"]),
    ("train.mixed_precision", ["train.mixed_precision=fp8"]),
    ("train.output_dir", ["train.output_dir=FILE"]),
    ("train.output_dir", ["train.output_dir=FILE/run"]),
    ("data.cache_dir", ["data.cache_dir=FILE"]),
    ("data.resolution", ["data.resolution=0"]),
    ("data.resolution", ["data.resolution=60"]),  # not a multiple of the VAE's factor 8
    ("data.crop", ["data.crop=diagonal"]),
    ("data.crop", ["data.crop=random"]),  # with the cache (on by default)
    ("data.encode_batch_size", ["data.encode_batch_size=0"]),
    ("data.caption_column", ["data.caption_column="]),
    ("model.prediction_type", ["model.prediction_type=noise"]),
    ("model.unet_config", ["model.unet_config=TMP/missing.yaml"]),
    ("model.unet_config", ["model.unet_config=LIST"]),
    ("model.unet_config", ["model.unet_config=WIDE"]),  # cross_attention_dim ≠ the text encoder's width
    ("model.scheduler", ["model.scheduler=TMP/missing.json"]),
    ("model.scheduler", ["model.scheduler=BETAS"]),  # an unknown beta_schedule
]


@pytest.mark.parametrize("key,overrides", BAD, ids=[" ".join(o) for _, o in BAD])
def test_a_bad_value_is_refused_naming_its_key_and_leaves_nothing_behind(key, overrides, tiny_models, dataset,
                                                                        tmp_path, no_side_effects):
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "wide.yaml").write_text("cross_attention_dim: 99\n")
    (tmp_path / "betas.json").write_text('{"beta_schedule": "bogus"}')
    swap = {"FILE": tmp_path / "a-file", "LIST": tmp_path / "list.yaml", "WIDE": tmp_path / "wide.yaml",
            "BETAS": tmp_path / "betas.json", "TMP": tmp_path}
    for name, path in swap.items():
        overrides = [o.replace(name, str(path)) for o in overrides]
    config = make_config(tmp_path, tiny_models[("epsilon", 8)], dataset, *overrides)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError) as error:
        train(config)
    message = str(error.value)
    assert key in message and "\n" not in message, message
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, the file untouched
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_messages_name_the_value_and_the_fix(tiny_models, dataset, tmp_path):
    cases = {"train.learning_rate=0": "train.learning_rate=0.0 must be > 0",
             "train.snr_gamma=0": "train.snr_gamma=0.0 must be > 0 (e.g. 5.0), or null",
             "train.ema_decay=1.5": "train.ema_decay=1.5 must be in (0, 1), or null to disable EMA",
             "train.lr_scheduler=bogus": "train.lr_scheduler='bogus' is not supported; choose one of 'linear'",
             "train.max_steps=0": "train.max_steps=0 must be >= 1"}
    for override, expected in cases.items():
        with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
            validate(make_config(tmp_path, tiny_models[("epsilon", 8)], dataset, override))


def test_values_set_in_code_are_checked_too(tiny_models, dataset, tmp_path, no_side_effects):
    config = make_config(tmp_path, tiny_models[("epsilon", 8)], dataset)
    config.train.batch_size = "4"
    with pytest.raises(ValueError, match=r"train\.batch_size='4' must be of type int"):
        train(config)
    config = make_config(tmp_path, tiny_models[("epsilon", 8)], dataset)
    config.train.max_grad_norm = True
    with pytest.raises(ValueError, match=r"train\.max_grad_norm=True must be a finite number"):
        train(config)
    config = make_config(tmp_path, tiny_models[("epsilon", 8)], dataset, "model.unet_config=x.yaml")
    config.lora.enabled = True
    with pytest.raises(ValueError, match="lora.enabled trains adapters on a pretrained UNet"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_a_valid_config_passes_and_unused_values_are_not_judged(tiny_models, dataset, tmp_path):
    validate(make_config(tmp_path, tiny_models[("epsilon", 8)], dataset))
    validate(make_config(tmp_path, tiny_models[("v_prediction", 4)], dataset, "data.resolution=36",
                         "train.snr_gamma=null", "train.ema_decay=null", "lora.rank=0",  # LoRA is off
                         "train.validation_steps=0",  # validation is off
                         "data.crop=random", "data.cache=false", "train.max_grad_norm=0"))
    assert not (tmp_path / "run").exists()


def test_a_refused_resume_or_an_empty_dataset_leaves_nothing_behind(tiny_models, dataset, tmp_path):
    with pytest.raises(ValueError, match="--resume '/x/y' is not a complete checkpoint folder"):
        train(make_config(tmp_path, tiny_models[("epsilon", 8)], dataset), resume="/x/y")
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        train(make_config(tmp_path, tiny_models[("epsilon", 8)], tmp_path / "empty"))
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_zero_learning_rate_with_one_line_and_exit_2(tiny_models, dataset, tmp_path, capsys):
    from latentdiff.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"pretrained": str(tiny_models[("epsilon", 8)])},
                                      "data": {"root": str(dataset), "resolution": 64},
                                      "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2}}))
    capsys.readouterr()
    assert main(["train", "--config", str(recipe), "--train.learning_rate=0"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "train.learning_rate" in lines[0] and "Traceback" not in err, err
    assert lines[0].startswith("latentdiff train: error: train.learning_rate=0.0 must be > 0")
    assert not (tmp_path / "run").exists()


def test_an_overlong_caption_warning_shows_its_start_and_length(tiny_models, caplog):
    from transformers import CLIPTokenizer

    from latentdiff.pipelines.prompts import tokenize

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models[("epsilon", 8)], subfolder="tokenizer")
    prompt = " ".join(f"shape{i} in red" for i in range(25))
    assert len(prompt) >= 300
    with caplog.at_level(logging.WARNING, logger="latentdiff"):
        ids, _ = tokenize(tokenizer, [prompt, "a short one"])
    assert ids.shape == (2, tokenizer.model_max_length)
    [record] = [r for r in caplog.records if "longer than" in r.getMessage()]
    text = record.getMessage()
    assert len(text) < 250, text
    assert "truncated" in text and f"{len(prompt)} characters" in text, text
    assert prompt[:40] in text and "…" in text and prompt[-40:] not in text, text
