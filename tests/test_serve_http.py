"""The server is safe by default: every bad request is a 4xx whose body says what is wrong (and the server keeps
serving), credentials when configured, CORS only for the given origins, models only from --models-dir."""

import base64
import json
import shutil

import pytest
from PIL import Image
from test_serve_support import close, make_app, png_b64

from latentdiff.models import DEFAULT_MODEL

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

PNG = png_b64(Image.new("RGB", (64, 64), "white"))
TXT = "/sdapi/v1/txt2img"
I2I = "/sdapi/v1/img2img"


@pytest.fixture(scope="module")
def client():
    app = make_app(max_size=256, max_steps=50, max_batch=4, max_body_mb=1)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    close(app)


BAD = [  # (path, body or raw bytes, status, words the message must hold)
    (TXT, b'{"prompt": "a", "steps": }', 400, "not valid JSON"),
    (TXT, b"[1, 2]", 400, "must be a JSON object"),
    (TXT, {"steps": "many"}, 422, "steps: Input should be a valid integer"),
    (TXT, {"prompt": ["a", "b"]}, 422, "prompt: Input should be a valid string"),
    (TXT, {"cfg_scale": {"x": 1}}, 422, "cfg_scale"),
    (TXT, {"width": 100000, "height": 64}, 422, "width=100000 is over this server's limit of 256"),
    (TXT, {"steps": -5}, 422, "steps=-5 must be between 1 and 50"),
    (TXT, {"steps": 51}, 422, "max_steps"),
    (TXT, {"batch_size": 3, "n_iter": 2}, 422, "max_batch"),
    (TXT, {"batch_size": 0}, 422, "batch_size=0"),
    (TXT, {"width": 63}, 422, "width=63 is not a positive multiple of the VAE factor 4"),
    (TXT, {"sampler_name": "Heun"}, 422, "sampler_name='Heun' is not one of this server's samplers"),
    (TXT, {"seed": -7}, 422, "seed=-7"),
    (TXT, {"override_settings": {"CLIP_stop_at_last_layers": 99}}, 422, "clip_skip=99"),
    (TXT, {"enable_hr": True, "hr_scale": 0.5}, 422, "hires_scale=0.5 must be > 1"),
    (I2I, {"init_images": ["not base64 at all!"]}, 422, "init_images[0] is not valid base64"),
    (I2I, {"init_images": [base64.b64encode(b"GIF89a, or just text").decode()]}, 422, "init_images[0] is not an image"),
    (I2I, {"init_images": [PNG[: len(PNG) // 2]]}, 422, "init_images[0]"),
    (I2I, {"init_images": []}, 422, "init_images is empty"),
    (I2I, {"prompt": "x"}, 422, "init_images: Field required"),
    (I2I, {"init_images": ["https://example.com/cat.png"]}, 422, "fetches nothing"),
    (I2I, {"init_images": [PNG], "denoising_strength": 0}, 422, "strength=0"),
    (I2I, {"init_images": [png_b64(Image.new("RGB", (300, 64)))]}, 422, "300×64 pixels"),
    (I2I, {"init_images": [PNG], "mask": "@@@"}, 422, "mask is not valid base64"),
    ("/sdapi/v1/png-info", {"image": "%%%"}, 422, "image is not valid base64"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "../../etc/passwd"}, 400, "is a path, not a model name"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "/work/main/weights/shapes"}, 400, "is a path"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "nonexistent"}, 404, "model 'nonexistent' not found"),
    ("/sdapi/v1/options", {"CLIP_stop_at_last_layers": "two"}, 422, "CLIP_stop_at_last_layers='two'"),
    ("/latentdiff/v1/edit", {"image": PNG, "source_prompt": "a", "target_prompt": "b", "method": "magic"}, 422,
     "method='magic' is not supported"),
]


@pytest.mark.parametrize("path,body,status,words", BAD,
                         ids=[f"{i}-{b[0].rsplit('/', 1)[1]}" for i, b in enumerate(BAD)])
def test_a_bad_request_is_a_4xx_naming_the_problem(client, path, body, status, words):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    assert client.get("/sdapi/v1/progress").status_code == 200  # still serving


def test_a_body_over_the_limit_is_413_before_it_is_read(client):
    huge = json.dumps({"init_images": ["A" * (1 << 20)]})
    r = client.post(I2I, content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "max_body_mb" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(3):
            yield b" " * (1 << 19)

    r = client.post(I2I, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "max_body_mb" in r.json()["detail"]


def test_credentials_are_required_when_configured():
    app = make_app(api_auth="alice:s3cret,bob:hunter2")
    with TestClient(app) as c:
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret")):
            r = c.get("/sdapi/v1/options", auth=auth)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
            assert "credentials" in r.json()["detail"]
        assert c.get("/", auth=None).status_code == 401  # the page and docs too
        assert c.post(TXT, json={"steps": 1}).status_code == 401
        assert c.get("/sdapi/v1/options", auth=("alice", "s3cret")).status_code == 200
        assert c.get("/docs", auth=("bob", "hunter2")).status_code == 200
    close(app)


def test_cors_is_off_unless_an_origin_is_given():
    origin = {"Origin": "http://localhost:3000"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    app = make_app()
    with TestClient(app) as c:
        assert "access-control-allow-origin" not in c.get("/sdapi/v1/options", headers=origin).headers
        assert "access-control-allow-origin" not in c.options(TXT, headers=preflight).headers
    close(app)
    app = make_app(cors_origins=["http://localhost:3000"], api_auth="a:b")
    with TestClient(app) as c:
        assert c.options(TXT, headers=preflight).headers["access-control-allow-origin"] == "http://localhost:3000"
        r = c.get("/sdapi/v1/options", headers=origin, auth=("a", "b"))
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = c.get("/sdapi/v1/options", headers={"Origin": "http://evil.test"}, auth=("a", "b"))
        assert "access-control-allow-origin" not in other.headers
    close(app)


@pytest.mark.slow
def test_options_switch_only_among_the_models_dir(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(DEFAULT_MODEL, models / "copy")
    (models / "outside").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    shutil.copytree(DEFAULT_MODEL, tmp_path / "elsewhere")  # a model, but reached through a link out of the dir
    (models / "not-a-model").mkdir()
    app = make_app(models_dir=models)
    with TestClient(app) as c:
        titles = [m["title"] for m in c.get("/sdapi/v1/sd-models").json()]
        assert [t.split(" ")[0] for t in titles] == ["shapes", "copy"]
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "outside"}).status_code == 404
        r = c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "copy", "CLIP_stop_at_last_layers": 2,
                                              "sd_vae": "Automatic"})
        assert r.status_code == 200 and "sd_vae" in r.json()["warning"]
        options = c.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] == titles[1] and options["CLIP_stop_at_last_layers"] == 2
        assert app.state.server.pipe.components.path == (models / "copy").resolve()
        image = c.post(TXT, json={"prompt": "a", "steps": 1}).json()["images"][0]
        assert "Clip skip: 2" in c.post("/sdapi/v1/png-info", json={"image": image}).json()["info"]
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[0]}).status_code == 200
        assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles[0]
    close(app)


def test_the_catalog_lists_single_file_checkpoints_of_the_models_dir(tmp_path):
    """A .safetensors checkpoint directly in --models-dir is a model (named by its stem, A1111's short file hash);
    other files, and a file reached through a link out of the folder, are not."""
    from latentdiff.pipelines.parameters import model_hash
    from latentdiff.serve.catalog import Catalog

    models = tmp_path / "models"
    models.mkdir()
    (models / "dreamy-v2.safetensors").write_bytes(b"not loaded here, only hashed")
    (models / "notes.txt").write_text("x")
    (tmp_path / "outside.safetensors").write_bytes(b"y")
    (models / "linked.safetensors").symlink_to(tmp_path / "outside.safetensors")
    catalog = Catalog(DEFAULT_MODEL, models)
    names = [entry.name for entry in catalog.entries()]
    assert names == ["shapes", "dreamy-v2"]
    entry = catalog.find("dreamy-v2.safetensors")
    assert entry.path == (models / "dreamy-v2.safetensors").resolve()
    assert entry.hash == model_hash(models / "dreamy-v2.safetensors") and entry.title == f"dreamy-v2 [{entry.hash}]"
    with pytest.raises(ValueError):
        catalog.find("../outside.safetensors")
