"""latentdiff.training.data: scanning image–caption folders, image decoding, transforms, determinism, bad data."""

import hashlib
import io
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.pipelines.image_input import to_rgb
from latentdiff.training import data
from latentdiff.training.data import ImageCaptionDataset, Transform, load_image, pick_caption, scan_dataset


def save(path, image=None, **kwargs):
    """Write ``image`` (default: an 8×8 solid RGB) to ``path``, creating folders; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (8, 8), (10, 20, 30))).save(path, **kwargs)
    return path


def noise(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(tensor):
    """(3, H, W) in [-1, 1] → (H, W, 3) uint8 levels, exactly."""
    return ((tensor.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()


def captions(report):
    return {item.path.relative_to(report.root).as_posix(): item.captions for item in report.items}


# ---- sources of captions -------------------------------------------------------------------------


def test_jsonl_metadata_captions_lists_and_digests(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "sub" / "B.JPG", format="JPEG")
    save(tmp_path / "c.webp", format="WEBP")
    rows = [{"file_name": "a.png", "text": " a red cat ", "caption": "x"},
            {"file_name": "sub/B.JPG", "text": ["one", "two"], "caption": "y"},
            {"file_name": "c.webp", "text": "photo\u2028of a dog", "caption": "z"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    report = scan_dataset(tmp_path)
    assert captions(report) == {"a.png": ("a red cat",), "sub/B.JPG": ("one", "two"),
                                "c.webp": ("photo\u2028of a dog",)}
    assert report.skipped == {}
    for item in report.items:
        assert item.digest == hashlib.sha256(item.path.read_bytes()).hexdigest()
    assert captions(scan_dataset(tmp_path, caption_column="caption")) == {"a.png": ("x",), "sub/B.JPG": ("y",),
                                                                         "c.webp": ("z",)}


def test_csv_metadata_with_json_list_caption(tmp_path):
    for name in ("a.png", "b.bmp", "sub/c.jpeg"):
        save(tmp_path / name)
    (tmp_path / "metadata.csv").write_text(
        'file_name,prompt\na.png,"[""a cat"", ""a kitten""]"\nb.bmp,[draft] a dog\nsub/c.jpeg,"a bird, flying"\n',
        encoding="utf-8")
    report = scan_dataset(tmp_path, caption_column="prompt")
    assert captions(report) == {"a.png": ("a cat", "a kitten"), "b.bmp": ("[draft] a dog",),
                                "sub/c.jpeg": ("a bird, flying",)}
    with pytest.raises(ValueError, match=r"metadata\.csv' has no 'text' column \(found: file_name, prompt\)"):
        scan_dataset(tmp_path)


def test_txt_captions_recursive_and_extensions(tmp_path):
    names = ["top.png", "x/y/z/deep.JPEG", "x/shot.Jpg", "x/y/pic.webp", "x/y/z/old.BMP"]
    for i, name in enumerate(names):
        save(tmp_path / name, format={".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}.get(
            os.path.splitext(name)[1].lower(), "JPEG"))
        (tmp_path / name).with_suffix(".txt").write_text(f"  caption {i}\n", encoding="utf-8")
    save(tmp_path / "anim.gif", format="GIF")  # not a dataset extension
    (tmp_path / "anim.txt").write_text("gif", encoding="utf-8")
    save(tmp_path / ".thumbs" / "hidden.png")
    (tmp_path / "readme.md").write_text("not an image", encoding="utf-8")
    report = scan_dataset(tmp_path)
    assert captions(report) == {name: (f"caption {i}",) for i, name in enumerate(names)}
    assert [item.path for item in report.items] == sorted(item.path for item in report.items)


# ---- image decoding ------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (32, 16), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 16, 16))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    image = load_image(save(tmp_path / "o.jpg", stored, format="JPEG", quality=95, exif=exif))
    assert image.size == (16, 32) and image.mode == "RGB"
    top, bottom = np.asarray(image)[4, 8].astype(int), np.asarray(image)[28, 8].astype(int)
    assert np.abs(top - (255, 0, 0)).max() <= 8 and np.abs(bottom - (0, 0, 255)).max() <= 8


def test_transparency_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    for x, value in enumerate([(10, 20, 30, 0), (10, 20, 30, 255), (200, 0, 0, 128)]):
        rgba.putpixel((x, 0), value)
    got = np.asarray(load_image(save(tmp_path / "rgba.png", rgba))).astype(int)
    a = 128 / 255
    assert got[0, 0].tolist() == [255, 255, 255] and got[0, 1].tolist() == [10, 20, 30]
    assert np.abs(got[0, 2] - [200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)]).max() <= 1

    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (40, 255))
    assert np.asarray(load_image(save(tmp_path / "la.png", la)))[0].tolist() == [[255] * 3, [40] * 3]

    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    got = np.asarray(load_image(save(tmp_path / "p.png", palette, transparency=0)))
    assert got[0].tolist() == [[255, 255, 255], [50, 60, 70]]


def test_gray_palette_cmyk_and_16_bit_become_8_bit_rgb(tmp_path):
    assert np.asarray(load_image(save(tmp_path / "l.png", Image.new("L", (1, 1), 77))))[0, 0].tolist() == [77] * 3
    palette = Image.new("P", (1, 1), 3)
    palette.putpalette([0] * 9 + [12, 34, 56] + [0] * 756)
    assert np.asarray(load_image(save(tmp_path / "p.bmp", palette)))[0, 0].tolist() == [12, 34, 56]
    cmyk = save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 16), (255, 0, 0, 0)), quality=100)
    assert Image.open(cmyk).mode == "CMYK"
    assert np.abs(np.asarray(load_image(cmyk))[8, 8].astype(int) - (0, 255, 255)).max() <= 2  # cyan

    levels = np.array([[65535, 32768, 0, 257, 65280]], dtype=np.uint16)
    sixteen = save(tmp_path / "g16.png", Image.fromarray(levels))
    assert Image.open(sixteen).mode == "I;16"
    expected = [255, 128, 0, 1, 254]  # round(v / 257), scaled, not clipped
    assert np.asarray(load_image(sixteen))[0, :, 0].tolist() == expected
    as_int32 = to_rgb(Image.fromarray(levels.astype(np.int32)))  # mode "I"
    assert as_int32.mode == "RGB" and np.asarray(as_int32)[0].tolist() == [[v] * 3 for v in expected]


# ---- transform -----------------------------------------------------------------------------------


def test_center_crop_matches_hand_computed_window():
    image = noise(40, 20)
    out = Transform(20)(image)
    assert out.shape == (3, 20, 20) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_array_equal(pixels(out), np.asarray(image)[:, 10:30])  # left = (40 - 20) // 2
    odd = noise(41, 21)
    np.testing.assert_array_equal(pixels(Transform(21)(odd)), np.asarray(odd)[:, 10:31])  # (41 - 21) // 2, floored

    tall = noise(20, 45)  # resized to 10 × round(22.5) = 10 × 22, top = (22 - 10) // 2 = 6
    assert Transform(10).resized_size(tall.size) == (10, 22) and Transform(10).resized_size((30, 20)) == (15, 10)
    expected = np.asarray(tall.resize((10, 22), Image.Resampling.LANCZOS))[6:16]
    np.testing.assert_array_equal(pixels(Transform(10)(tall)), expected)


def test_output_range_is_minus_one_to_one():
    image = Image.new("RGB", (4, 4), (0, 0, 0))
    image.putpixel((1, 2), (255, 128, 0))
    out = Transform(4)(image)
    assert out.min().item() == -1.0 and out.max().item() == 1.0
    assert out[:, 2, 1].tolist() == pytest.approx([1.0, 128 / 127.5 - 1, -1.0], abs=1e-6)


def test_random_crop_and_flip_are_reproducible_and_explicit():
    image = noise(48, 24)
    t = Transform(16, crop="random", flip=True)
    resized = np.asarray(image.resize(t.resized_size(image.size), Image.Resampling.LANCZOS))  # (16, 32, 3)
    seen = set()
    for seed in range(24):
        out = t(image, random.Random(seed))
        torch.testing.assert_close(out, t(image, random.Random(seed)), rtol=0, atol=0)
        left, top, flipped = t.choose(image.size, random.Random(seed))
        window = resized[top:top + 16, left:left + 16]
        np.testing.assert_array_equal(pixels(out), window[:, ::-1] if flipped else window)
        seen.add((left, flipped))
    assert len({left for left, _ in seen}) > 4 and {flipped for _, flipped in seen} == {False, True}
    # an explicit flip overrides the draw and does not move the crop
    plain, mirrored = t(image, random.Random(3), flip=False), t(image, random.Random(3), flip=True)
    torch.testing.assert_close(mirrored, plain.flip(-1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs an rng"):
        t(image)
    assert t.key() == Transform(16, crop="random").key() != Transform(16).key() != Transform(32).key()


def test_dataset_draws_depend_only_on_seed_epoch_index(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", noise(40, 24, seed=i))
    (tmp_path / "metadata.jsonl").write_text("\n".join(
        json.dumps({"file_name": f"{i}.png", "text": ["a", "b", "c"] if i == 0 else f"only {i}"}) for i in range(3)))
    report = scan_dataset(tmp_path)
    t = Transform(16, crop="random", flip=True)
    first, again = ImageCaptionDataset(report, t, seed=7), ImageCaptionDataset(report.items, t, seed=7)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    for i in range(3):
        a, b = first[i], again[i]
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
        assert a["caption"] == b["caption"] == pick_caption(report.items[i], 7, 0, i) and a["index"] == i
        expected = t(load_image(report.items[i].path), data.sample_rng(7, 0, i, "transform"))
        torch.testing.assert_close(a["pixel_values"], expected, rtol=0, atol=0)
    assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)  # no global RNG
    assert first[-1]["index"] == 2 and first[2]["caption"] == "only 2"

    by_epoch = []
    for epoch in range(12):
        first.set_epoch(epoch)
        by_epoch.append((first[0]["pixel_values"], first[0]["caption"]))
    assert any(not torch.equal(by_epoch[0][0], x) for x, _ in by_epoch[1:])  # crops change with the epoch
    assert {c for _, c in by_epoch} == {"a", "b", "c"}
    assert [pick_caption(report.items[0], 7, e, 0) for e in range(12)] == [c for _, c in by_epoch]
    assert [pick_caption(report.items[0], 8, e, 0) for e in range(12)] != [c for _, c in by_epoch]


# ---- bad data ------------------------------------------------------------------------------------


def make_unreadable(paths, monkeypatch):
    """chmod 000; as root (who reads anyway) also make the module's reads of these files fail."""
    for path in paths:
        os.chmod(path, 0)
    if os.geteuid() == 0:
        real = data._read_bytes

        def read(p):
            if any(os.path.samefile(p, path) for path in paths):
                raise PermissionError(13, "Permission denied", str(p))
            return real(p)
        monkeypatch.setattr(data, "_read_bytes", read)


def broken_images(root):
    """Corrupt, truncated and zero-byte files under ``root``; returns {relative path: reason}."""
    png, jpg = io.BytesIO(), io.BytesIO()
    noise(64, 64).save(png, "PNG")
    noise(64, 64).save(jpg, "JPEG")
    (root / "corrupt.png").write_bytes(b"this is not an image")
    (root / "cut").mkdir()
    (root / "cut" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "cut" / "truncated.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    (root / "empty.webp").write_bytes(b"")
    return {"corrupt.png": data.CORRUPT, "cut/truncated.png": data.CORRUPT, "cut/truncated.jpg": data.CORRUPT,
            "empty.webp": data.EMPTY}


def check_report(report, caplog, expected, usable):
    """Each skipped name reported under its reason, in exactly one warning line, and the summary counts."""
    by_reason = {}
    for name, reason in expected.items():
        by_reason.setdefault(reason, []).append(name)
    assert {r: sorted(n) for r, n in report.skipped.items()} == {r: sorted(n) for r, n in by_reason.items()}
    lines = [r.getMessage() for r in caplog.records if r.name == "latentdiff.training.data" and r.levelno == logging.WARNING]
    for name, reason in expected.items():
        if reason != data.UNLISTED:
            assert len([line for line in lines if line.startswith(f"skipped '{name}': {reason}")]) == 1, name
    summary = [line for line in lines if line.startswith(f"dataset '{report.root}'")]
    assert len(summary) == 1 and f": {len(report.items)} usable image(s), {len(expected)} skipped (" in summary[0]
    for reason, names in by_reason.items():
        assert f"{reason}: {len(names)}" in summary[0]
    assert len(report.items) == usable


def test_every_kind_of_bad_metadata_dataset_is_skipped_and_counted(tmp_path, caplog, monkeypatch):
    root, outside = tmp_path / "ds", save(tmp_path / "outside.png")
    root.mkdir()
    expected = broken_images(root)
    for name in ("good.png", "locked.png", "nocap.png", "blank.png", "latin1.png", "unlisted.png"):
        save(root / name)
    save(root / "anim.gif", format="GIF")
    os.symlink(outside, root / "escape.png")
    make_unreadable([root / "locked.png"], monkeypatch)
    rows = [json.dumps({"file_name": n, "text": "ok"}).encode() for n in
            ["good.png", *expected, "locked.png", "missing.png", "../outside.png", str(outside), "escape.png",
             "anim.gif"]]
    rows += [b'{"file_name": "nocap.png"}', b'{"file_name": "blank.png", "text": "  "}',
             b'{"file_name": "latin1.png", "text": "caf\xe9"}', b"{not json"]
    (root / "metadata.jsonl").write_bytes(b"\n".join(rows))
    expected.update({"locked.png": data.UNREADABLE, "missing.png": data.MISSING, "../outside.png": data.OUTSIDE,
                     str(outside): data.OUTSIDE, "escape.png": data.OUTSIDE, "anim.gif": data.UNSUPPORTED,
                     "nocap.png": data.NO_CAPTION, "blank.png": data.NO_CAPTION, "latin1.png": data.NOT_UTF8,
                     f"metadata.jsonl line {len(rows)}": data.BAD_ROW, "unlisted.png": data.UNLISTED})
    with caplog.at_level(logging.INFO, logger="latentdiff.training.data"):
        report = scan_dataset(root)
    check_report(report, caplog, expected, usable=1)
    assert captions(report) == {"good.png": ("ok",)}
    assert "skipped 'corrupt.png': corrupt or truncated image (cannot identify image file)" in caplog.text
    assert "ignored 1 image(s)" in caplog.text and "(first: 'unlisted.png')" in caplog.text


def test_every_kind_of_bad_txt_dataset_is_skipped_and_counted(tmp_path, caplog, monkeypatch):
    root, outside = tmp_path / "ds", save(tmp_path / "outside.png")
    expected = {"sub/nocap.png": data.NO_CAPTION, "sub/blank.png": data.NO_CAPTION, "latin1.png": data.NOT_UTF8,
                "lockedcap.png": data.UNREADABLE, "escape.png": data.OUTSIDE, "locked.png": data.UNREADABLE}
    for name in ["good.png", *expected]:
        if name != "escape.png":
            save(root / name)
        (root / name).with_suffix(".txt").write_bytes(b"a caption")
    os.symlink(outside, root / "escape.png")
    save(root / "leak.png")
    (tmp_path / "secret.txt").write_bytes(b"outside caption")
    os.symlink(tmp_path / "secret.txt", root / "leak.txt")
    expected["leak.png"] = data.OUTSIDE
    broken = broken_images(root)
    for name in broken:
        (root / name).with_suffix(".txt").write_bytes(b"a caption")
    expected.update(broken)
    (root / "sub" / "nocap.txt").unlink()
    (root / "sub" / "blank.txt").write_bytes(b" \n\t")
    (root / "latin1.txt").write_bytes(b"caf\xe9")
    make_unreadable([root / "lockedcap.txt", root / "locked.png"], monkeypatch)
    with caplog.at_level(logging.INFO, logger="latentdiff.training.data"):
        report = scan_dataset(root)
    check_report(report, caplog, expected, usable=1)
    assert captions(report) == {"good.png": ("a caption",)}
    assert "skipped 'sub/nocap.png': missing caption (no 'sub/nocap.txt')" in caplog.text
    assert "skipped 'lockedcap.png': unreadable file (caption file 'lockedcap.txt': Permission denied)" in caplog.text


def test_zero_usable_samples_and_missing_folder_are_clear_errors(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no usable images in dataset folder '.*empty'.*no images found"):
        scan_dataset(tmp_path / "empty")
    save(tmp_path / "bad" / "a.png")
    with caplog.at_level(logging.INFO, logger="latentdiff.training.data"):
        with pytest.raises(ValueError, match=r"dataset folder '.*bad'.*\.txt caption.*missing caption: 1$"):
            scan_dataset(tmp_path / "bad")
    assert "dataset '" in caplog.text and "0 usable image(s), 1 skipped (missing caption: 1)" in caplog.text
    with pytest.raises(ValueError, match=r"dataset folder '.*nowhere' does not exist"):
        scan_dataset(tmp_path / "nowhere")
