"""The shapes world: deterministic renders, held-out pairs, true captions, the dataset CLI, the analyzer."""

import json
from itertools import combinations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from latentdiff.cli import build_parser, main
from latentdiff.shapes import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    analyze,
    make_caption,
    parse_caption,
    render,
    render_dataset,
    sample_attributes,
)
from latentdiff.shapes.analyze import BORDER
from latentdiff.shapes.dataset import examples, make_example, read_metadata
from latentdiff.shapes.render import SHAPE_AREA, coverage
from latentdiff.shapes.world import (
    GRID_ANCHORS,
    MIN_COLOR_DISTANCE,
    POSITION_JITTER,
    SIZES,
    VOCABULARY,
    check_attributes,
)


def accuracy(images_and_attrs):
    """Per-attribute fraction of images whose analysis equals the ground truth."""
    hits = {k: 0 for k in ATTRIBUTES}
    for image, attrs in images_and_attrs:
        found = analyze(image)
        for k in ATTRIBUTES:
            hits[k] += found[k] == attrs[k]
    return {k: v / len(images_and_attrs) for k, v in hits.items()}


@pytest.mark.parametrize("split,n", [("train", 240), ("heldout", 120)])
def test_analyzer_reads_rendered_images(split, n):
    data = [(image, row) for image, row in examples(n, seed=101, split=split)]
    assert set(row["shape"] for _, row in data) == set(SHAPES)  # every class is exercised
    acc = accuracy(data)
    assert all(v >= 0.99 for v in acc.values()), acc


def test_analyzer_best_guess_on_imperfect_images():
    rng = np.random.default_rng(0)
    clean = [make_example(7, i) for i in range(60)]
    noisy = [(Image.fromarray(np.clip(np.asarray(im) + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)), a)
             for im, a in clean]
    blurred = [(im.filter(ImageFilter.GaussianBlur(1.0)), a) for im, a in clean]
    for data in (noisy, blurred):  # measured ≈ 0.97–1.0 per attribute on 300 images
        acc = accuracy(data)
        assert acc["shape"] >= 0.85 and min(acc[k] for k in ATTRIBUTES if k != "shape") >= 0.95, acc
    # no object: the background is still read, the object's attributes are "none"
    for name, rgb in BACKGROUNDS.items():
        blank = analyze(np.full((64, 64, 3), rgb, np.uint8))
        assert blank == {"shape": "none", "color": "none", "size": "none", "position": "none", "background": name}
    # garbage, other sizes, grayscale and float arrays: a best guess in the vocabulary, never a crash
    for image in (rng.integers(0, 256, (64, 64, 3)).astype(np.uint8), rng.random((64, 64)),
                  np.zeros((64, 64, 4), np.uint8), Image.new("RGB", (128, 96), "red")):
        found = analyze(image)
        for k in ATTRIBUTES:
            assert found[k] in VOCABULARY[k] + ("none",), found
    # a 128×128 render reads like the 64×64 one, and [0, 1] floats like uint8
    image, attrs = clean[0]
    assert {k: analyze(image.resize((128, 128), Image.Resampling.NEAREST))[k] for k in ATTRIBUTES} == {
        k: attrs[k] for k in ATTRIBUTES}
    assert analyze(np.asarray(image) / 255.0) == analyze(image)
    with pytest.raises(ValueError, match="RGB image"):
        analyze(np.zeros((64, 64, 2)))


def test_coverage_matches_closed_form_area_and_stays_inside_the_image():
    for shape in SHAPES:
        for r in (6.0, 12.0):
            area = coverage(shape, 32.3, 31.7, r).sum()
            assert area == pytest.approx(SHAPE_AREA[shape] * r**2, rel=0.02), shape
    # the largest object at the extreme jitter of a corner leaves the border pixels untouched
    for shape in SHAPES:
        for cx, cy in [(GRID_ANCHORS[0] - POSITION_JITTER,) * 2, (GRID_ANCHORS[-1] + POSITION_JITTER,) * 2]:
            c = coverage(shape, cx, cy, SIZES["large"])
            ring = np.ones_like(c, bool)
            ring[BORDER:-BORDER, BORDER:-BORDER] = False
            assert c[ring].max() == 0.0, (shape, cx, cy)  # the analyzer reads these pixels as background


def test_renders_are_deterministic_and_seeded():
    a = [np.asarray(im) for im, _ in examples(8, seed=3)]
    b = [np.asarray(im) for im, _ in examples(8, seed=3)]
    c = [np.asarray(im) for im, _ in examples(8, seed=4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sum(np.array_equal(x, y) for x, y in zip(a, c)) == 0
    attrs = sample_attributes(np.random.default_rng(0))
    same = [np.asarray(render(attrs, np.random.default_rng(9))) for _ in range(2)]
    other = np.asarray(render(attrs, np.random.default_rng(10)))
    assert np.array_equal(*same) and not np.array_equal(same[0], other)  # only the jitter differs


def test_recolored_example_changes_the_object_color_and_nothing_else():
    for i in range(12):
        image, row = make_example(3, i)
        color = next(c for c in COLORS if c not in (row["color"], row["background"]))
        recolored, new_row = make_example(3, i, color=color)
        a, b = np.asarray(image, np.float64), np.asarray(recolored, np.float64)
        bg = np.asarray(BACKGROUNDS[row["background"]], np.float64)
        # coverage α from each image's own colors: the same geometry, up to 8-bit rounding
        alphas = [(x - bg) @ (np.asarray(COLORS[c]) - bg) / np.sum((np.asarray(COLORS[c]) - bg) ** 2)
                  for x, c in ((a, row["color"]), (b, color))]
        assert np.abs(alphas[0] - alphas[1]).max() < 0.02, i
        assert new_row == {**row, "color": color, "text": new_row["text"]}  # the caption names the new color
        assert analyze(recolored)["color"] == color


def test_held_out_pairs_only_in_the_heldout_split():
    assert 4 <= len(HELD_OUT) <= 6 and len(set(HELD_OUT)) == len(HELD_OUT)
    rng = np.random.default_rng(0)
    train = [sample_attributes(rng, "train") for _ in range(4000)]
    pairs = {(a["shape"], a["color"]) for a in train}
    assert not pairs & set(HELD_OUT)
    assert pairs == {(s, c) for s in SHAPES for c in COLORS} - set(HELD_OUT)  # every other pair is seen
    for shape, color in HELD_OUT:  # each held-out word is still seen in training with other partners
        assert any(s == shape for s, _ in pairs) and any(c == color for _, c in pairs)
    heldout = {(a["shape"], a["color"]) for a in (sample_attributes(rng, "heldout") for _ in range(300))}
    assert heldout == set(HELD_OUT)
    with pytest.raises(ValueError, match="split='test'"):
        sample_attributes(rng, "test")


def test_background_is_never_the_object_color_and_named_colors_are_far_apart():
    rng = np.random.default_rng(1)
    samples = [sample_attributes(rng, split) for split in ("train", "heldout") for _ in range(2000)]
    assert all(a["background"] != a["color"] for a in samples)
    assert {a["background"] for a in samples} == set(BACKGROUNDS)
    assert {(a["color"], a["background"]) for a in samples} >= {("white", "gray"), ("black", "white")}
    for x, y in combinations(list(COLORS.values()) + list(BACKGROUNDS.values()), 2):
        assert x == y or np.linalg.norm(np.subtract(x, y)) >= MIN_COLOR_DISTANCE
    with pytest.raises(ValueError, match="invisible"):
        check_attributes({**samples[0], "color": "white", "background": "white"})
    with pytest.raises(ValueError, match="shape='hexagon'"):
        render({**samples[0], "shape": "hexagon"}, rng)


def test_captions_state_only_true_attributes():
    rng = np.random.default_rng(2)
    seen_stated, captions = set(), set()
    for _ in range(2000):
        attrs = sample_attributes(rng, "train")
        caption, stated = make_caption(attrs, rng)
        assert parse_caption(caption) == {k: attrs[k] for k in stated}, caption
        assert stated and set(stated) & {"shape", "color"}
        seen_stated.add(tuple(stated))
        captions.add(caption)
    assert len(seen_stated) >= 20 and len(captions) >= 1000  # attributes are omitted in many combinations
    examples_ = {
        "a large red circle in the top left corner on a white background":
            dict(shape="circle", color="red", size="large", position="top left", background="white"),
        "top left: a small blue square": dict(shape="square", color="blue", size="small", position="top left"),
        "a red circle": dict(shape="circle", color="red"),
        "red circle, center, gray background": dict(shape="circle", color="red", position="center", background="gray"),
        "a black background with a white cross on the right": dict(
            shape="cross", color="white", position="right", background="black"),
        "in the middle, a shape that is purple": dict(color="purple", position="center"),
    }
    for caption, expected in examples_.items():
        assert parse_caption(caption) == expected, caption


def cli(*argv):
    return main(list(argv))


def test_render_cli_writes_an_imagefolder_whose_rows_match_the_files(tmp_path, capsys):
    out = tmp_path / "data"
    assert cli("shapes", "render", "--out", str(out), "--n", "12", "--seed", "5", "--split", "heldout", "-q") == 0
    assert capsys.readouterr().out.strip() == str(out / "metadata.jsonl")
    rows = read_metadata(out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(p.name for p in out.iterdir()) == pngs + ["metadata.jsonl"]  # no temp file left behind
    assert len(pngs) == 12 and [r["file_name"] for r in rows] == pngs
    for row in rows:
        image, expected = make_example(5, pngs.index(row["file_name"]), "heldout")
        assert np.array_equal(np.asarray(Image.open(out / row["file_name"])), np.asarray(image))
        assert row == {"file_name": row["file_name"], **expected}
        assert (row["shape"], row["color"]) in HELD_OUT
        assert parse_caption(row["text"]) == {k: row[k] for k in row["stated"]}
        found = analyze(Image.open(out / row["file_name"]))
        assert {k: found[k] for k in ATTRIBUTES} == {k: row[k] for k in ATTRIBUTES}
    # same seed → the same bytes; a non-empty folder is refused unless --overwrite
    again = tmp_path / "again"
    render_dataset(again, 12, seed=5, split="heldout")
    for name in pngs + ["metadata.jsonl"]:
        assert (again / name).read_bytes() == (out / name).read_bytes()
    assert cli("shapes", "render", "--out", str(out), "--n", "3", "--seed", "5") == 2
    assert "not empty" in capsys.readouterr().err
    assert cli("shapes", "render", "--out", str(out), "--n", "3", "--seed", "6", "--overwrite", "-q") == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "metadata.jsonl"]
    assert [r["split"] for r in read_metadata(out)] == ["train"] * 3
    assert (out / "000000.png").read_bytes() != (again / "000000.png").read_bytes()


def test_cli_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    assert cli("shapes", "render", "--out", str(tmp_path / "x"), "--n", "0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n=0 must be a positive" in err
    assert cli("shapes", "analyze", str(tmp_path / "missing.png")) == 2
    assert "cannot read image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shapes", "render", "--out", "x", "--n", "3", "--split", "test"])
    image, attrs = make_example(0, 1)
    image.save(tmp_path / "one.png")
    assert cli("shapes", "analyze", str(tmp_path / "one.png")) == 0
    line = json.loads(capsys.readouterr().out)
    assert line == {"file": str(tmp_path / "one.png"), **{k: attrs[k] for k in ATTRIBUTES}}


def test_vocabulary_is_complete():
    assert len(SHAPES) >= 4 and len(COLORS) >= 8 and len(BACKGROUNDS) >= 3
    assert set(POSITIONS) == {"top left", "top", "top right", "left", "center", "right",
                              "bottom left", "bottom", "bottom right"}


def test_recipe_names_a_missing_file_and_an_inheritance_cycle(tmp_path):
    from latentdiff.build.recipe import Recipe

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "world.yaml").write_text("inherit: ../b\n")
    (tmp_path / "b" / "world.yaml").write_text("train_images: 8\n")
    with pytest.raises(ValueError, match="lacks unet.yaml"):
        Recipe(tmp_path / "a").required("unet.yaml")
    (tmp_path / "b" / "world.yaml").write_text("inherit: ../a\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        Recipe(tmp_path / "a")
    with pytest.raises(ValueError, match="has no world.yaml"):
        Recipe(tmp_path / "c")
