"""`latentdiff serve`'s API against the Pipeline API on the default model: A1111's txt2img / img2img / inpainting
give the same pixels as the library with the same settings, images carry their parameters, png-info reads them
back, and every field we do not honour is named in info's warnings."""

import json

import numpy as np
import pytest
from PIL import Image
from test_serve_support import STEPS, close, decode_png, make_app, pixels, png_b64, shared_pipeline

from latentdiff.pipelines.parameters import parse_parameters

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def client():
    app = make_app()
    with TestClient(app) as c:
        yield c
    close(app)


@pytest.fixture(scope="module")
def euler_a(client):
    """Two images, n_iter 2 (each alone in its batch), seeds 7 and 8, A1111's 'Euler a'."""
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "negative_prompt": "blue", "steps": STEPS,
                                                "seed": 7, "n_iter": 2, "sampler_name": "Euler a", "cfg_scale": 5})
    assert r.status_code == 200, r.text
    return r.json()


def test_txt2img_gives_the_pipelines_pixels_and_parameters(euler_a):
    info = json.loads(euler_a["info"])  # A1111 sends info as a JSON string
    assert info["all_seeds"] == [7, 8] and info["sampler_name"] == "Euler a" and info["warnings"] == []
    pipe = shared_pipeline()
    for i, b64 in enumerate(euler_a["images"]):
        assert not b64.startswith("data:")  # raw base64, as A1111 sends
        image = decode_png(b64)
        expected = pipe.generate(PROMPT, negative_prompt="blue", steps=STEPS, seed=7 + i, sampler="euler-a",
                                 guidance=5.0)[0]
        assert np.array_equal(pixels(image), pixels(expected.image))
        text = image.text["parameters"]  # A1111's parameters chunk, the same as info's infotext
        assert text == info["infotexts"][i]
        fields = parse_parameters(text)
        assert fields["Sampler"] == "Euler a" and fields["Seed"] == str(7 + i) and fields["Steps"] == str(STEPS)
        assert json.loads(image.text["latentdiff"]) == json.loads(json.dumps(expected.params))
    assert euler_a["parameters"]["seed"] == 7 and euler_a["parameters"]["prompt"] == PROMPT  # the request, echoed


def test_a1111_sampler_and_schedule_names_map_to_ours(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 1, "sampler_name": "DPM++ 2M",
                                                "scheduler": "Karras", "width": 32, "height": 48})
    assert r.status_code == 200, r.text
    image = decode_png(r.json()["images"][0])
    assert image.size == (32, 48)
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in image.text["parameters"]
    assert json.loads(image.text["latentdiff"])["sampler"] == "dpmpp-2m-karras"


def test_seed_minus_one_draws_a_seed_and_reports_it(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, "seed": -1})
    info = json.loads(r.json()["info"])
    assert 0 <= info["seed"] < 2**32 and info["all_seeds"] == [info["seed"]]
    assert f"Seed: {info['seed']}," in info["infotexts"][0]


def test_png_info_reads_the_parameters_back(client, euler_a):
    image = euler_a["images"][1]
    for sent in (image, "data:image/png;base64," + image):  # webuiapi sends a data: URL
        r = client.post("/sdapi/v1/png-info", json={"image": sent})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["info"] == json.loads(euler_a["info"])["infotexts"][1]
        assert body["parameters"]["Seed"] == "8" and body["parameters"]["Prompt"] == PROMPT
        assert body["parameters"]["Negative prompt"] == "blue" and "latentdiff" in body["items"]
    plain = client.post("/sdapi/v1/png-info", json={"image": png_b64(Image.new("RGB", (8, 8)))}).json()
    assert plain == {"info": "", "items": {}, "parameters": {}}


def test_fields_that_are_not_ours_are_named_in_warnings(client):
    webuiapi_defaults = {"styles": [], "subseed": -1, "subseed_strength": 0.0, "restore_faces": False,
                         "tiling": False, "s_churn": 0, "s_noise": 1, "alwayson_scripts": {}, "script_args": [],
                         "override_settings_restore_afterwards": True, "eta": 1.0, "hr_resize_x": 0}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, **webuiapi_defaults})
    assert json.loads(r.json()["info"])["warnings"] == []  # A1111's 'off' values say nothing
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, "restore_faces": True, "tiling": True,
                                                "foo": 3, "override_settings": {"sd_vae": "x"}})
    assert r.status_code == 200
    warnings = "\n".join(json.loads(r.json()["info"])["warnings"])
    for name in ("restore_faces=true", "tiling=true", "'foo'", "override_settings.sd_vae"):
        assert name in warnings


def test_clip_skip_comes_from_override_settings(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1, "seed": 2,
                                                "override_settings": {"CLIP_stop_at_last_layers": 2}})
    image = decode_png(r.json()["images"][0])
    assert "Clip skip: 2" in image.text["parameters"]
    expected = shared_pipeline().generate(PROMPT, steps=1, seed=2, clip_skip=2)[0].image
    assert np.array_equal(pixels(image), pixels(expected))


def test_img2img_and_inpainting_give_the_pipelines_pixels(client, euler_a):
    pipe = shared_pipeline()
    start = decode_png(euler_a["images"][0]).convert("RGB")
    r = client.post("/sdapi/v1/img2img", json={"init_images": [png_b64(start)], "prompt": "a blue square",
                                                "denoising_strength": 0.5, "steps": STEPS, "seed": 3})
    assert r.status_code == 200, r.text
    expected = pipe.img2img("a blue square", start, strength=0.5, steps=STEPS, seed=3)[0].image
    assert np.array_equal(pixels(decode_png(r.json()["images"][0])), pixels(expected))
    assert "init_images" not in r.json()["parameters"]  # A1111 leaves them out unless include_init_images

    mask = Image.new("L", start.size, 0)
    mask.paste(255, (16, 16, 48, 48))
    r = client.post("/sdapi/v1/img2img", json={"init_images": [png_b64(start)], "mask": png_b64(mask),
                                                "prompt": "a blue square", "denoising_strength": 1.0,
                                                "steps": STEPS, "seed": 4, "mask_blur": 2, "inpainting_fill": 1})
    assert r.status_code == 200, r.text
    expected = pipe.inpaint("a blue square", start, mask, strength=1.0, mask_blur=2, steps=STEPS, seed=4)[0].image
    got = decode_png(r.json()["images"][0])
    assert np.array_equal(pixels(got), pixels(expected))
    assert np.array_equal(pixels(got)[:8], pixels(start)[:8])  # outside the mask: the input
    assert json.loads(r.json()["info"])["warnings"] == []


@pytest.mark.slow
def test_hires_fix_upscales_within_the_limit(client):
    body = {"prompt": PROMPT, "steps": 2, "seed": 5, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
            "denoising_strength": 0.5}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    image = decode_png(r.json()["images"][0])
    expected = shared_pipeline().hires_fix(PROMPT, scale=1.5, strength=0.5, upscaler="lanczos", steps=2, seed=5)
    assert image.size == (96, 96) and np.array_equal(pixels(image), pixels(expected[0].image))
    assert "Hires upscale: 1.5" in image.text["parameters"]
    too_big = client.post("/sdapi/v1/txt2img", json={**body, "hr_scale": 40})
    assert too_big.status_code == 422 and "max_size" in too_big.json()["detail"]


def test_the_catalog_endpoints_answer_in_a1111s_shapes(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"DDIM", "Euler", "Euler a", "DPM++ 2M"} <= {s["name"] for s in samplers}
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    assert "karras" in {s["name"] for s in client.get("/sdapi/v1/schedulers").json()}
    (model,) = client.get("/sdapi/v1/sd-models").json()
    assert model["model_name"] == "shapes" and model["title"] == f"shapes [{model['hash']}]"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == model["title"]
    state = client.get("/sdapi/v1/progress").json()
    assert state["progress"] == 0 and state["state"]["job_count"] == 0  # idle, as webuiapi's wait_for_ready reads


def test_the_page_and_docs_are_served_and_the_page_names_no_other_host(client):
    import re

    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", text, re.I), "the page must load nothing from elsewhere"
    assert client.get("/openapi.json").json()["paths"]["/sdapi/v1/txt2img"]
    assert client.get("/docs").status_code == 200


@pytest.mark.slow
def test_edit_gives_latentdiff_edits_image(client, euler_a, tmp_path, capsys):
    from latentdiff.cli import main

    source = decode_png(euler_a["images"][0]).convert("RGB")
    source.save(tmp_path / "source.png")
    r = client.post("/latentdiff/v1/edit", json={"image": png_b64(source), "source_prompt": PROMPT, "steps": 4,
                                                  "target_prompt": "a blue circle on a white background"})
    assert r.status_code == 200, r.text
    edited = decode_png(r.json()["image"])
    assert main(["edit", "--image", str(tmp_path / "source.png"), "--source-prompt", PROMPT, "--steps", "4",
                 "--target-prompt", "a blue circle on a white background", "--device", "cpu", "--quiet",
                 "-o", str(tmp_path / "edit.png")]) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "edit-edit.png") as cli:
        assert np.array_equal(pixels(edited), pixels(cli))
    assert json.loads(r.json()["info"])["method"] == "ddpm" and json.loads(edited.text["latentdiff"])["steps"] == 4
