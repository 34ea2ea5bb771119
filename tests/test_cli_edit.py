"""`latentdiff edit` / `invert`: files written, inversion reuse, and one-line errors with exit code 2."""

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main
from latentdiff.pipelines.images import read_params


@pytest.fixture()
def photo(tmp_path):
    """An RGBA photo of an odd size: the edit input is converted and center-cropped, with notes."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (70, 90, 4), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def run(capsys, *argv):
    capsys.readouterr()
    try:
        code = main([*map(str, argv), "--quiet"])
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edit_writes_side_by_side_and_each_alone(tiny_models, photo, tmp_path, capsys):
    model = tiny_models[("epsilon", 8)]
    code, out, err = run(capsys, "edit", "--image", photo, "--source-prompt", "a red circle", "--target-prompt",
                         "a blue circle", "--model", model, "--steps", "4", "--method", "npi", "-o",
                         tmp_path / "e.png")
    assert code == 0, err
    assert "converted RGBA" in err and "center-cropped" in err
    side = Image.open(tmp_path / "e.png")
    assert side.size == (3 * 64, 64)
    params = read_params(tmp_path / "e-edit.png")
    assert params["target_prompt"] == "a blue circle" and params["method"] == "npi" and params["mode"] == "replace"
    assert params["fixed_point_iters"] == 3
    recon = np.asarray(Image.open(tmp_path / "e-reconstruction.png"))
    assert np.array_equal(np.asarray(side)[:, 64:128], recon)
    # the reconstruction's PSNR against the (cropped) input, as the first panel shows it, and the VAE's ceiling
    shown = np.asarray(side)[:, :64].astype(np.float64)
    expected = 10 * np.log10(255.0**2 / ((shown - recon.astype(np.float64)) ** 2).mean())
    assert params["reconstruction_psnr"] == pytest.approx(expected, abs=0.01)
    assert 0 < params["vae_round_trip_psnr"] < 100
    assert f"reconstruction: {params['reconstruction_psnr']:.2f} dB PSNR" in err


def run_edit(capsys, model, target, out, *extra):
    """`latentdiff edit --target-prompt TARGET --model MODEL -o OUT` with ``extra`` arguments."""
    return run(capsys, "edit", "--target-prompt", target, "--model", model, "-o", out, *extra)


def test_invert_then_edit_reuses_the_inversion(tiny_models, photo, tmp_path, capsys):
    model = tiny_models[("epsilon", 8)]
    inv = tmp_path / "inv.safetensors"
    assert run(capsys, "invert", "--image", photo, "--source-prompt", "a red circle", "--model", model,
               "--steps", "4", "--method", "nti", "-o", inv)[0] == 0
    direct = run_edit(capsys, model, "a red square", tmp_path / "a.png", "--image", photo, "--source-prompt",
                  "a red circle", "--steps", "4", "--method", "nti")
    reused = run_edit(capsys, model, "a red square", tmp_path / "b.png", "--inversion", inv)
    assert direct[0] == reused[0] == 0, reused[2]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a-edit.png")), np.asarray(Image.open(tmp_path / "b-edit.png")))
    # an inversion from another model is refused
    code, _, err = run(capsys, "edit", "--inversion", inv, "--target-prompt", "a red square", "--model",
                       tiny_models["sd2"], "-o", tmp_path / "c.png")
    assert code == 2 and "another model" in err and len(err.strip().splitlines()) == 1


def test_the_default_method_is_ddpm_and_its_seed_travels_with_the_inversion(tiny_models, photo, tmp_path, capsys):
    model = tiny_models[("epsilon", 8)]
    inv = tmp_path / "inv.safetensors"
    assert run(capsys, "invert", "--image", photo, "--source-prompt", "a red circle", "--model", model,
               "--steps", "4", "--seed", "3", "-o", inv)[0] == 0
    from_photo = ("--image", photo, "--source-prompt", "a red circle", "--steps", "4")
    fresh = run_edit(capsys, model, "a blue circle", tmp_path / "a.png", *from_photo, "--seed", "3")
    reused = run_edit(capsys, model, "a blue circle", tmp_path / "b.png", "--inversion", inv)
    other = run_edit(capsys, model, "a blue circle", tmp_path / "c.png", *from_photo)
    assert fresh[0] == reused[0] == other[0] == 0, reused[2]
    a, b, c = (read_params(tmp_path / f"{name}-edit.png") for name in "abc")
    assert a["method"] == b["method"] == "ddpm" and a["seed"] == b["seed"] == 3 and c["seed"] == 0
    assert a["skip"] == 0 and a["guidance"] == 1.0 and a["edit_guidance"] == 3.75  # noise solved at 1; edits at half the model's 7.5
    edit = {name: np.asarray(Image.open(tmp_path / f"{name}-edit.png")) for name in "abc"}
    assert np.array_equal(edit["a"], edit["b"]) and not np.array_equal(edit["a"], edit["c"])
    # the reconstruction is exact: the VAE round trip's PSNR
    assert a["reconstruction_psnr"] == a["vae_round_trip_psnr"]
    # invert has no edit to take ddpm's (edit) guidance
    code, _, err = run(capsys, "invert", "--image", photo, "--source-prompt", "a red circle", "--model", model,
                       "--guidance", "3", "-o", tmp_path / "x.safetensors")
    assert code == 2 and "--guidance is ddpm's edit guidance" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra,message", [
    (["--image", "NOPE", "--source-prompt", "a red circle"], "NOPE"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--steps", "0"], "steps=0"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--mode", "replace", "--target-prompt2"], "same number of tokens"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--method", "magic"], "invalid choice: 'magic'"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--reweight", "red"], "must look like WORD=FACTOR"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--dtype", "fp16"], "run in fp32"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--fixed-point-iters", "-1"], "must be 0 or more"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--method", "nti", "--source-guidance", "2"],
     "--source-guidance applies to --method ddpm"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--method", "direct", "--skip", "0.3"],
     "--skip needs the noisy latents of a ddpm inversion"),
    (["--image", "PHOTO", "--source-prompt", "a red circle", "--skip", "1"], "--skip 1.0 must be a fraction"),
])
def test_edit_mistakes(extra, message, tiny_models, photo, tmp_path, capsys):
    (tmp_path / "NOPE").write_bytes(b"not an image")
    target = "a big red circle" if "--target-prompt2" in extra else "a blue circle"
    extra = [a for a in extra if a != "--target-prompt2"]
    argv = ["edit", "--target-prompt", target, "--model", tiny_models[("epsilon", 8)], "-o", tmp_path / "x.png",
            *[{"NOPE": tmp_path / "NOPE", "PHOTO": photo}.get(a, a) for a in extra]]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("x*.png"))


def test_eval_edit_reports_every_method_against_the_vae_ceiling(tiny_models, tmp_path, capsys):
    import json

    code, out, err = run(capsys, "eval-edit", "--model", tiny_models[("epsilon", 8)], "--images", "1", "--steps",
                         "3", "--methods", "ddim", "direct", "ddpm", "--out", tmp_path)
    assert code == 0, err
    summary = json.loads((tmp_path / "edit_metrics.json").read_text())
    assert set(summary) == {"vae", "ddim", "direct", "ddpm"}
    # direct's and ddpm's source branches follow their trajectories back to the image latent: the VAE round
    # trip, up to float rounding (the reconstruction is the source half of the batched edit, not a batch of its own)
    assert summary["direct"]["psnr"] == pytest.approx(summary["vae"]["psnr"], abs=1e-3)
    assert summary["ddpm"]["psnr"] == pytest.approx(summary["vae"]["psnr"], abs=1e-3)
    assert "| VAE round trip (ceiling) |" in out and (tmp_path / "edits.png").is_file()
    for row in summary.values():  # "both": the target color read and the mask kept, on the same image
        assert row["both_ok"] <= min(row["color_ok"], row["iou_ok"])
        assert row["both_ok"] >= row["color_ok"] + row["iou_ok"] - 1

    code, _, err = run(capsys, "eval-edit", "--model", tiny_models[("epsilon", 8)], "--cross-replace", "1.5")
    assert code == 2 and err.strip() == ("latentdiff eval-edit: error: --cross-replace 1.5 must be a fraction of "
                                         "the steps in [0, 1]")
    # the fractions reach the word-swap controller: no cross-attention replacement changes the edit
    code, _, err = run(capsys, "eval-edit", "--model", tiny_models[("epsilon", 8)], "--images", "1", "--steps", "3",
                       "--methods", "ddim", "--cross-replace", "0", "--self-replace", "0", "--out", tmp_path / "none")
    assert code == 0, err
    none = json.loads((tmp_path / "none" / "edit_metrics.json").read_text())
    assert none["ddim"]["psnr"] == pytest.approx(summary["ddim"]["psnr"])
    assert none["ddim"]["iou_mean"] != pytest.approx(summary["ddim"]["iou_mean"], abs=1e-9)


def test_word_swap_ceiling_draws_the_true_edit():
    from latentdiff.shapes.analyze import analyze, object_mask
    from latentdiff.shapes.evaluate_edit import iou, shapes_examples, swap_color, true_edit

    rng = np.random.default_rng(0)
    for i, (image, attrs, caption) in enumerate(shapes_examples(8)):
        color = swap_color(attrs, rng)
        truth = analyze(true_edit(i, color))
        assert truth == {**attrs, "color": color}, (i, attrs, truth)
        assert iou(object_mask(image), object_mask(true_edit(i, color))) >= 0.9, i
