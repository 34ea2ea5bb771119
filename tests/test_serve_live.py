"""A live server on a free loopback port, driven by A1111's own client library (webuiapi): the same seed gives the
same pixels as `latentdiff generate`; credentials as A1111's --api-auth; a client that leaves has its queued job
dropped and its running job stopped; `latentdiff serve` refuses to expose itself without credentials."""

import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from test_serve_support import STEPS, LiveServer, make_app, pixels, shared_pipeline

from latentdiff.cli import main

pytest.importorskip("fastapi")
webuiapi = pytest.importorskip("webuiapi", reason="pip install webuiapi (the test extra) for the A1111 client tests")
httpx = pytest.importorskip("httpx")

PROMPT = "a green triangle on a black background"


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def live():
    with LiveServer(make_app()) as server:
        yield server


def test_webuiapi_txt2img_matches_latentdiff_generate(live, tmp_path, capsys):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler a", steps=STEPS)
    result = api.txt2img(prompt=PROMPT, negative_prompt="red", seed=11, width=64, height=64, cfg_scale=4)
    assert result.info["all_seeds"] == [11] and result.info["warnings"] == []  # webuiapi's full payload is ours
    assert main(["generate", PROMPT, "--negative-prompt", "red", "--steps", str(STEPS), "--seed", "11",
                 "--sampler", "euler-a", "--guidance", "4", "--device", "cpu", "--quiet",
                 "-o", str(tmp_path / "cli.png")]) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "cli.png") as cli:
        assert np.array_equal(pixels(result.image), pixels(cli))
        assert result.image.info["parameters"] == cli.text["parameters"]
    read = api.png_info(result.image)  # webuiapi sends it back as a data: URL
    assert read.info == result.info["infotexts"][0] and read.json["parameters"]["Seed"] == "11"


def test_webuiapi_options_models_samplers_and_progress(live):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.port)
    (title,) = api.util_get_model_names()
    assert api.util_get_current_model() == title and title.startswith("shapes [")
    api.util_set_model("shapes")  # its name; webuiapi posts the closest title to /options
    assert api.get_options()["sd_model_checkpoint"] == title
    assert {"DDIM", "Euler a", "DPM++ 2M"} <= set(api.util_get_sampler_names())
    assert "karras" in api.util_get_scheduler_names()
    api.util_wait_for_ready(check_interval=0.1)  # idle: progress 0 and job_count 0


@pytest.mark.slow
def test_webuiapi_inpainting_names_the_fields_it_cannot_honour(live):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="DDIM", steps=STEPS)
    image = Image.new("RGB", (64, 64), "white")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    result = api.img2img(images=[image], mask_image=mask, prompt=PROMPT, seed=3, width=64, height=64,
                         denoising_strength=1.0, cfg_scale=4, inpainting_fill=1)
    expected = shared_pipeline().inpaint(PROMPT, image, mask, strength=1.0, mask_blur=4, steps=STEPS, seed=3,
                                         guidance=4.0, sampler="ddim", eta=1.0)[0].image
    assert np.array_equal(pixels(result.image), pixels(expected))
    assert result.info["warnings"] == ["inpaint_full_res=true is not supported here; ignored"]


def test_webuiapi_with_credentials():
    with LiveServer(make_app(api_auth="ann:pw")) as server:
        anonymous = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        with pytest.raises(RuntimeError, match="401"):
            anonymous.txt2img(prompt="a", steps=1, width=64, height=64)
        assert anonymous.get_options()["error"] == "Unauthorized"  # webuiapi returns a GET's JSON as it is
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="ann", password="pw")
        assert api.txt2img(prompt="a", steps=1, width=64, height=64).image.size == (64, 64)
        api.set_auth("ann", "nope")
        with pytest.raises(RuntimeError, match="401"):
            api.png_info(Image.new("RGB", (8, 8)))


def test_a_client_that_leaves_has_its_job_dropped_or_stopped():
    app = make_app(queue_size=2, max_steps=1000)
    server = app.state.server
    with LiveServer(app) as live:
        progress = lambda: httpx.get(f"{live.url}/sdapi/v1/progress?skip_current_image=true").json()["state"]  # noqa
        leaving = threading.Thread(target=lambda: pytest.raises(httpx.ReadTimeout, httpx.post,
                                                                f"{live.url}/sdapi/v1/txt2img", timeout=3,
                                                                json={"prompt": "a", "steps": 1000, "batch_size": 4}))
        leaving.start()
        wait_for(lambda: progress()["sampling_step"] >= 1)
        with pytest.raises(httpx.ReadTimeout):  # queued behind it, then gone
            httpx.post(f"{live.url}/sdapi/v1/txt2img", json={"prompt": "b", "steps": 1}, timeout=0.5)
        wait_for(lambda: progress()["queued"] == 0, timeout=5)  # dropped from the queue
        start = time.monotonic()
        leaving.join(30)
        wait_for(lambda: progress()["job_count"] == 0, timeout=10)  # the running one stopped at its next step
        assert time.monotonic() - start < 10 and server.worker.done == 1  # the dropped job never ran
        assert progress()["sampling_step"] == 0
        again = httpx.post(f"{live.url}/sdapi/v1/txt2img", json={"prompt": "c", "steps": 1}, timeout=60)
        assert again.status_code == 200 and json.loads(again.json()["info"])["interrupted"] is False


def test_serve_refuses_other_hosts_without_credentials(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--api-auth USER:PASS" in capsys.readouterr().err
    busy = socket.create_server(("127.0.0.1", 0))
    port = str(busy.getsockname()[1])
    assert main(["serve", "--host", "0.0.0.0", "--insecure", "--port", port]) == 2  # warned, then refused
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0 without --api-auth" in err and "cannot listen on 0.0.0.0" in err
    assert main(["serve", "--port", port, "--queue-size", "-1"]) == 2
    assert "queue_size=-1" in capsys.readouterr().err
    busy.close()
