"""Loading the image to edit (any mode and size) and encoding it: pipelines/image_input.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.models import encode_images, load_components, scale_latents
from latentdiff.pipelines.image_input import default_edit_size, encode_image, load_edit_image


@pytest.fixture(scope="module")
def plain(tiny_models):
    return load_components(tiny_models[("epsilon", 8)], device="cpu")


def test_load_edit_image_modes_and_sizes(tmp_path):
    rgba = np.zeros((45, 67, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: white after compositing
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image, notes = load_edit_image(tmp_path / "rgba.png", 32)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert notes == ["converted RGBA with transparency to RGB on white",
                     "resized 67×45 → 48×32, center-cropped to 32×32"]
    assert np.asarray(image).min() == 255

    Image.fromarray(np.full((30, 20), 77, np.uint8), "L").save(tmp_path / "gray.png")
    image, notes = load_edit_image(tmp_path / "gray.png", (64, 32))  # (height, width)
    assert image.size == (32, 64) and tuple(np.asarray(image)[0, 0]) == (77, 77, 77)
    assert notes == ["converted grayscale (L) to RGB", "upscaled 20×30 → 43×64, center-cropped to 32×64"]

    Image.fromarray(np.full((16, 16), 257 * 100, np.uint16)).save(tmp_path / "deep.png")
    image, notes = load_edit_image(tmp_path / "deep.png", 16)
    assert notes[0].startswith("converted 16-bit grayscale") and len(notes) == 1
    assert tuple(np.asarray(image)[0, 0]) == (100, 100, 100)

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    image, notes = load_edit_image(tmp_path / "cmyk.jpg", 16)
    assert notes == ["converted CMYK to RGB"] and image.mode == "RGB"

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 24×16 is shown 16×24
    Image.new("RGB", (24, 16), (0, 0, 255)).save(tmp_path / "turned.jpg", exif=exif)
    image, notes = load_edit_image(tmp_path / "turned.jpg", (24, 16))
    assert notes == ["rotated by its EXIF orientation"] and image.size == (16, 24)

    Image.new("RGB", (16, 16)).save(tmp_path / "exact.png")
    assert load_edit_image(tmp_path / "exact.png", 16)[1] == []


def test_load_edit_image_rejects_unreadable_files_and_bad_sizes(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    for path, match in [(tmp_path / "fake.png", "cannot read image"), (tmp_path / "no.png", "does not exist"),
                        (tmp_path, "is a folder")]:
        with pytest.raises(ValueError, match=match) as error:
            load_edit_image(path, 16)
        assert "\n" not in str(error.value)
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="multiples of the VAE factor 8"):
        load_edit_image(tmp_path / "ok.png", 20, multiple_of=8)


def test_encode_image_is_the_scaled_posterior_mean(plain):
    size = default_edit_size(plain)
    assert size == (64, 64)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    latents = encode_image(plain, image)
    pixels = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    mean, _ = encode_images(plain, pixels)
    assert latents.shape == (1, 4, 8, 8) and torch.equal(latents, scale_latents(plain, mean))
    with pytest.raises(ValueError, match="not a multiple of the VAE factor"):
        encode_image(plain, image.crop((0, 0, 60, 64)))


# --- fixed-point refinement of the pivot ----------------------------------------------------------
