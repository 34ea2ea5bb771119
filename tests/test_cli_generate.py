"""`latentdiff generate`: files, metadata that reproduces the image, and one-line errors with exit code 2."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main
from latentdiff.pipelines import Pipeline
from latentdiff.pipelines.images import read_params


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_numbered_pngs_grid_and_reproducible_metadata(tiny_models, tmp_path, capsys):
    model = str(tiny_models[("epsilon", 8)])
    code, out, err = run(capsys, "generate", "a", "blue", "square", "--model", model, "--steps", "12",
                         "--num-images", "2", "--seed", "5", "--guidance", "4", "--negative-prompt", "red",
                         "-o", str(tmp_path / "img.png"), "--quiet")
    assert code == 0, err
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["img-000.png", "img-001.png", "img-grid.png"]
    params = read_params(tmp_path / "img-001.png")
    assert params["prompt"] == "a blue square" and params["seed"] == 6 and params["negative_prompt"] == "red"
    assert params["steps"] == 12 and params["guidance"] == 4 and params["sampler"] == "ddim"
    assert Image.open(tmp_path / "img-001.png").text["parameters"].startswith("a blue square\nNegative prompt: red")
    # the stored parameters alone regenerate the image (alone, not in a batch of 2: float rounding may move 1/255)
    keys = ["negative_prompt", "steps", "guidance", "guidance_rescale", "sampler", "eta", "seed", "height", "width"]
    again = Pipeline.from_pretrained(params["model"], device="cpu")(params["prompt"], **{k: params[k] for k in keys})
    diff = np.abs(np.asarray(again[0]).astype(int) - np.asarray(Image.open(tmp_path / "img-001.png")).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert Image.open(tmp_path / "img-grid.png").size == (128, 64)


@pytest.fixture()
def broken_model(tiny_models, tmp_path):
    path = tmp_path / "broken"
    shutil.copytree(tiny_models[("epsilon", 8)], path)
    shutil.rmtree(path / "vae")
    return path


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "x", "--model", "/nonexistent/model"], "model '/nonexistent/model' does not exist"),
        (["generate", "x", "--model", "BROKEN"], "is missing its vae/ component"),
        (["generate", "x", "--model", "MODEL", "--sampler", "heun"], "sampler='heun' is not supported; choose one of 'ddim', 'ddpm', 'dpmpp-2m'"),
        (["generate", "x", "--model", "MODEL", "--steps", "0"], "steps=0 must be an integer between 1 and"),
        (["generate", "x", "--model", "MODEL", "--height", "60"], "height=60 is not a positive multiple of the VAE factor 8"),
        (["generate", "x", "--model", "MODEL", "--width", "33"], "width=33 is not a positive multiple of the VAE factor 8"),
        (["generate", "x", "--model", "MODEL", "-o", "/proc/forbidden/x.png"], "cannot write output '/proc/forbidden/x.png'"),
        (["generate", "x", "--model", "MODEL", "-o", "out.jpg"], "output 'out.jpg' must end in .png"),
        (["generate", "--model", "MODEL"], "no prompt given"),
        (["generate", "--model", "MODEL", "--from-file", "EMPTY"], "no prompt given"),
        (["generate", "x", "--model", "MODEL", "--eta", "-1"], "eta=-1.0 must be >= 0"),
        (["generate", "x", "--model", "MODEL", "--sampler", "euler-a", "--eta", "1"], "--eta sets DDIM's η but the "
         "sampler is 'euler-a'; drop --eta or use --sampler ddim"),
        (["generate", "x", "--model", "MODEL", "--num-images", "0"], "num_images=0 must be at least 1"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(argv, message, tiny_models, broken_model, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    swap = {"MODEL": str(tiny_models[("epsilon", 8)]), "BROKEN": str(broken_model), "EMPTY": str(empty)}
    os.chdir(tmp_path)
    code, out, err = run(capsys, *[swap.get(a, a) for a in argv], "--quiet")
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("**/*.png"))


def test_pickle_weights_are_refused_by_default(tiny_models, tmp_path, capsys):
    path = tmp_path / "pickled"
    shutil.copytree(tiny_models[("epsilon", 8)], path)
    for f in (path / "unet").glob("*.safetensors"):
        f.rename(f.with_name("diffusion_pytorch_model.bin"))
    code, _, err = run(capsys, "generate", "x", "--model", str(path), "--quiet")
    assert code == 2 and "only pickle weights (.bin)" in err


def test_eval_prints_accuracy_per_guidance_and_the_vae_ceiling(tiny_models, tmp_path, capsys):
    import json

    code, out, err = run(capsys, "eval", "--model", str(tiny_models[("v_prediction", 4)]), "--seen", "2", "--heldout", "1",
                         "--seeds", "1", "--steps", "2", "--guidance", "1", "3", "--out", str(tmp_path), "-q")
    assert code == 0, err
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    assert list(accuracy) == ["1.0", "3.0", "VAE round trip"]
    assert set(accuracy["VAE round trip"]) == {"seen", "heldout"}
    assert "| VAE round trip | seen |" in out and "| 3 | heldout |" in out
    assert "sampler ddim (eta 0), 2 steps" in out
    assert (tmp_path / "grid-guidance-3.png").is_file() and (tmp_path / "readings.json").is_file()


def test_eval_prompt_seed_draws_another_set_and_sampler_settings_reach_the_sampler(tiny_models, tmp_path, capsys, monkeypatch):
    import json

    from latentdiff.pipelines import Pipeline

    passed = []
    generate = Pipeline.generate
    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: passed.append((k["guidance_rescale"], k["sampler"],
                                                                                  k["eta"])) or generate(self, *a, **k))
    captions = {}
    for seed in (None, "999"):
        out = tmp_path / str(seed)
        extra = ["--prompt-seed", seed, "--guidance-rescale", "0.7", "--sampler", "ddim", "--eta", "0.5"] if seed else []
        code, _, err = run(capsys, "eval", "--model", str(tiny_models[("v_prediction", 4)]), "--seen", "3",
                           "--heldout", "2", "--seeds", "1", "--steps", "2", "--guidance", "3", "--out", str(out),
                           "-q", *extra)
        assert code == 0, err
        captions[seed] = [r["caption"] for r in json.loads((out / "readings.json").read_text())]
    assert passed == [(None, None, None), (0.7, "ddim", 0.5)] and captions[None] != captions["999"]
    code, _, err = run(capsys, "eval", "--model", str(tiny_models[("v_prediction", 4)]), "--guidance-rescale", "2")
    assert code == 2 and "--guidance-rescale 2.0 must be in [0, 1]" in err and len(err.strip().splitlines()) == 1


def test_help_and_the_run_say_which_defaults_come_from_the_model(tiny_models, tmp_path, capsys):
    """--help names the model's own defaults (the default model's generation config) and a run prints the settings
    it used, naming those that came from the model's latentdiff_generation.json."""
    import json

    from latentdiff.models import DEFAULT_MODEL
    from latentdiff.pipelines.settings import GenerationConfig

    shipped = GenerationConfig.for_model(DEFAULT_MODEL)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: the model's, else 50; the default model's: {shipped.steps})" in text
    assert f"the default model's: {shipped.guidance:g})" in text
    model = tmp_path / "model"
    shutil.copytree(tiny_models[("epsilon", 8)], model)
    (model / "latentdiff_generation.json").write_text(json.dumps({"steps": 3, "guidance": 2.0}))
    code, _, err = run(capsys, "generate", "a red circle", "--model", str(model), "--guidance", "5",
                       "-o", str(tmp_path / "x.png"), "-q")
    assert code == 0
    assert "settings: sampler ddim (η 0), 3 steps, guidance 5, 64x64, seed 0 (steps from the model's generation " \
           "config)" in err, err
