"""`latentdiff img2img` and `latentdiff inpaint`: files with their parameters, the same pixels as the Python API,
outpainting, and one-line errors with exit code 2."""

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


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 70, 3)) * 255).astype("uint8")).save(root / "photo.png")  # off-grid size
    mask = np.zeros((24, 35), dtype=np.uint8)  # another size: resized to the image
    mask[6:18, 8:24] = 255
    Image.fromarray(mask).save(root / "mask.png")
    (root / "text.png").write_text("not an image")
    return root


def test_img2img_writes_pngs_with_parameters_equal_to_the_api(tiny_models, files, tmp_path, capsys):
    model = str(tiny_models[("epsilon", 8)])
    code, out, err = run(capsys, "img2img", "a red circle", "--image", str(files / "photo.png"), "--model", model,
                         "--strength", "0.5", "--steps", "6", "--seed", "2", "-o", str(tmp_path / "a.png"), "-q")
    assert code == 0, err
    image = Image.open(tmp_path / "a.png")
    assert image.size == (64, 48)  # 70×48 rounded down to the VAE factor 8
    assert "center-cropped to 64×48" in err
    params = read_params(tmp_path / "a.png")
    assert params["strength"] == 0.5 and params["image"].endswith("photo.png") and params["steps"] == 6
    api = Pipeline.from_pretrained(model, device="cpu").img2img("a red circle", files / "photo.png", strength=0.5,
                                                                steps=6, seed=2)[0].image
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(api))


def test_inpaint_and_outpaint(tiny_models, files, tmp_path, capsys):
    model = str(tiny_models["inpaint"])
    code, out, err = run(capsys, "inpaint", "a red circle", "--image", str(files / "photo.png"), "--mask",
                         str(files / "mask.png"), "--model", model, "--steps", "4", "--num-images", "2",
                         "-o", str(tmp_path / "b.png"), "-q")
    assert code == 0, err
    assert out.split() == [str(tmp_path / f"b-{i}.png") for i in ("000", "001", "grid")]
    assert "mask resized 35×24 → 64×48" in err
    params = read_params(tmp_path / "b-001.png")
    assert params["seed"] == 1 and params["mask_blur"] == 4 and params["composite"] is True
    code, out, err = run(capsys, "inpaint", "a red circle", "--image", str(files / "photo.png"), "--extend",
                         "left=12,bottom=8", "--model", model, "--steps", "4", "-o", str(tmp_path / "c.png"), "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "c.png").size == (64 + 16, 48 + 8) and "left=12 rounded up to 16" in err
    # the input (center-cropped to 64 wide) is kept exactly where the blurred seam does not reach
    kept = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))[:48 - 16, 16 + 16:]
    photo = np.asarray(Image.open(files / "photo.png"))[:, 3:67]
    assert np.array_equal(kept, photo[:32, 16:])


@pytest.mark.parametrize("argv,message", [
    (["img2img", "x", "--image", "PHOTO", "--strength", "0"], "strength=0.0 must be in (0, 1]"),
    (["img2img", "x", "--image", "PHOTO", "--strength", "0.01", "--steps", "10"], "runs no step"),
    (["img2img", "x", "--image", "TEXT"], "cannot read image"),
    (["inpaint", "x", "--image", "PHOTO", "--mask", "TEXT"], "cannot read image"),
    (["inpaint", "x", "--image", "PHOTO"], "pass --mask MASK"),
    (["inpaint", "x", "--image", "PHOTO", "--extend", "middle=8"], "--extend 'middle=8' must look like SIDE=PX"),
    (["inpaint", "x", "--image", "PHOTO", "--extend", "left=0"], "extends no side"),
])
def test_mistakes_exit_2_with_one_line(tiny_models, files, capsys, argv, message):
    paths = {"PHOTO": str(files / "photo.png"), "TEXT": str(files / "text.png")}
    argv = [paths.get(a, a) for a in argv] + ["--model", str(tiny_models[("epsilon", 8)])]
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_generate_hires_fix(tiny_models, tmp_path, capsys):
    model = str(tiny_models[("epsilon", 8)])
    code, out, err = run(capsys, "generate", "a red circle", "--model", model, "--steps", "4", "--hires-scale", "1.5",
                         "--hires-steps", "3", "--hires-upscaler", "latent", "-o", str(tmp_path / "h.png"), "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "h.png").size == (96, 96)
    params = read_params(tmp_path / "h.png")
    assert (params["hires_scale"], params["hires_steps"], params["hires_upscaler"], params["width"]) == \
        (1.5, 3, "latent", 64)
    for flag, value, message in (("--hires-scale", "1", "hires_scale=1.0 must be > 1"),
                                 ("--hires-strength", "0", "hires_strength=0.0 must be in (0, 1]")):
        extra = [flag, value] + (["--hires-scale", "2"] if flag != "--hires-scale" else [])
        code, out, err = run(capsys, "generate", "x", "--model", model, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
