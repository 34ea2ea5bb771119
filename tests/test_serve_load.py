"""Load and faults (slow): a `latentdiff serve` process under 32 concurrent clients for 60 s, valid and invalid
requests mixed, on the default model — no server error for a valid request, every invalid one a 4xx with a
message, the queue bound held (503 with Retry-After past it), RSS flat over the last 30 s, /progress answering
fast throughout (median < 50 ms, 95 % < 100 ms, all < 1 s on 2 shared cores); and kill -9 mid-job, restart: it
serves again, no partial file in its outputs."""

import asyncio
import base64
import json
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from test_serve_support import ServerProcess, png_b64

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

CLIENTS, SECONDS, QUEUE = 32, 60.0, 4
WHITE = png_b64(Image.new("RGB", (64, 64), "white"))
SAMPLERS = ["Euler a", "DDIM", "DPM++ 2M", "Euler"]
INVALID = [  # (path, json body or raw bytes)
    ("/sdapi/v1/txt2img", b'{"prompt": "x", "steps": '),
    ("/sdapi/v1/txt2img", {"steps": -1}),
    ("/sdapi/v1/txt2img", {"width": 100000}),
    ("/sdapi/v1/txt2img", {"steps": "four"}),
    ("/sdapi/v1/txt2img", {"sampler_name": "Heun"}),
    ("/sdapi/v1/img2img", {"init_images": ["***"]}),
    ("/sdapi/v1/img2img", {"init_images": [base64.b64encode(b"not an image").decode()]}),
    ("/sdapi/v1/png-info", {"image": "%%"}),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "../../etc"}),
]


def check_outputs(folder) -> int:
    """Every file in the outputs folder is a whole PNG with its parameters; no temporary file is left."""
    files = list(folder.iterdir())
    assert not [f.name for f in files if not f.name.endswith(".png") or f.name.startswith(".")]
    for path in files:
        with Image.open(path) as image:
            image.load()
            assert "Steps:" in image.text["parameters"]
    return len(files)


async def client(url, deadline, rng, out):
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        while time.monotonic() < deadline:
            pick = rng.random()
            if pick < 0.3:
                path, body = rng.choice(INVALID)
                kw = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
                    else {"json": body}
                r = await http.post(path, **kw)
                detail = r.json().get("detail")
                out["invalid"].append((r.status_code, detail if isinstance(detail, str) else None))
                continue
            if pick < 0.4:
                path, body = "/sdapi/v1/img2img", {"init_images": [WHITE], "prompt": "a red square", "steps": 4,
                                                   "denoising_strength": 0.5, "seed": rng.randrange(1000)}
            else:
                path, body = "/sdapi/v1/txt2img", {"prompt": "a red circle", "steps": rng.randint(2, 6),
                                                   "seed": rng.randrange(1000), "batch_size": rng.randint(1, 2),
                                                   "sampler_name": rng.choice(SAMPLERS),
                                                   "save_images": rng.random() < 0.2}
            start = time.monotonic()
            r = await http.post(path, json=body)
            out["valid"].append((r.status_code, time.monotonic() - start))
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
                await asyncio.sleep(min(2.0, int(r.headers["retry-after"]) * rng.uniform(0.5, 1.5)))  # it waits
            elif r.status_code == 200:
                out["interrupted"] += json.loads(r.json()["info"])["interrupted"]


WATCH = """
import json, resource, sys, time, httpx
url, seconds, pid = sys.argv[1], float(sys.argv[2]), sys.argv[3]
out = {"progress": [], "queued": [], "rss": []}
with httpx.Client(base_url=url, timeout=10) as http:
    start = last_interrupt = time.monotonic()
    while time.monotonic() - start < seconds:
        t = time.monotonic()
        state = http.get("/sdapi/v1/progress").json()["state"]
        out["progress"].append(time.monotonic() - t)
        out["queued"].append(state["queued"])
        with open(f"/proc/{pid}/statm") as f:
            out["rss"].append((t - start, int(f.read().split()[1]) * resource.getpagesize()))
        if t - last_interrupt > 10:
            http.post("/sdapi/v1/interrupt")
            last_interrupt = t
        time.sleep(0.1)
print(json.dumps(out))
"""


def watch(server, seconds: float) -> subprocess.Popen:
    """In its own process (the load's clients would hold its GIL): /progress every 100 ms with its preview, the
    queue length, the server's RSS; and an interrupt every 10 s."""
    return subprocess.Popen([sys.executable, "-c", WATCH, server.url, str(seconds), str(server.proc.pid)],
                            stdout=subprocess.PIPE, text=True)


def test_32_clients_for_a_minute(tmp_path):
    outputs = tmp_path / "outputs"
    with open(tmp_path / "server.log", "w") as log:
        server = ServerProcess("--queue-size", str(QUEUE), "--outputs", str(outputs), log=log).start()
    out = {"valid": [], "invalid": [], "interrupted": 0}
    try:
        httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"steps": 1}, timeout=120)  # warm
        deadline = time.monotonic() + SECONDS
        watcher = watch(server, SECONDS)

        async def run():
            await asyncio.gather(*(client(server.url, deadline, random.Random(i), out) for i in range(CLIENTS)))

        asyncio.run(run())
        out.update(json.loads(watcher.communicate(timeout=60)[0]))
        assert server.proc.poll() is None, "the server died"
    finally:
        server.stop()
    codes = [code for code, _ in out["valid"]]
    ok = [t for code, t in out["valid"] if code == 200]
    rss = np.array(out["rss"])
    late = rss[rss[:, 0] >= SECONDS - 30, 1]
    ms = 1000 * np.array(out["progress"])
    report = {"valid": len(codes), "ok": len(ok), "busy (503)": codes.count(503), "invalid": len(out["invalid"]),
              "interrupted": out["interrupted"], "p50 s": np.median(ok), "p95 s": np.percentile(ok, 95),
              "progress p50 ms": np.median(ms), "progress p95 ms": np.percentile(ms, 95),
              "progress p99 ms": np.percentile(ms, 99), "progress max ms": ms.max(), "max queued": max(out["queued"]),
              "rss MiB": late[0] / 2**20, "rss growth (last 30 s)": late.max() / late[0] - 1,
              "outputs": check_outputs(outputs)}
    print(json.dumps(report, default=float, indent=1))
    assert set(codes) <= {200, 503}, [c for c in codes if c not in (200, 503)]  # no server error, ever
    assert len(ok) > 10 and codes.count(503) > 0  # work was done, and the queue bound turned clients away
    assert all(400 <= code < 500 and detail for code, detail in out["invalid"]), out["invalid"][:5]
    assert max(out["queued"]) <= QUEUE
    assert out["interrupted"] >= 1  # an interrupted job answered with what it had
    assert late.max() < 1.10 * late[0], report
    # /progress: 13-27 ms with one job running; under this load, on 2 shared cores, the GIL (held by the worker
    # between the small model's many small ops) and the clients' own CPU push the tail past 100 ms
    assert np.median(out["progress"]) < 0.05 and np.percentile(out["progress"], 95) < 0.1, report
    assert max(out["progress"]) < 1.0, report


def test_kill_9_mid_job_then_restart_leaves_no_partial_file(tmp_path):
    outputs = tmp_path / "outputs"
    server = ServerProcess("--outputs", str(outputs)).start()
    try:
        done = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"steps": 2, "save_images": True}, timeout=120)
        assert done.status_code == 200 and check_outputs(outputs) == 1
        threading.Thread(target=lambda: pytest.raises(httpx.HTTPError, httpx.post, f"{server.url}/sdapi/v1/txt2img",
                                                      json={"steps": 150, "batch_size": 4, "save_images": True},
                                                      timeout=300), daemon=True).start()
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.url}/sdapi/v1/progress").json()["state"]["sampling_step"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (outputs / ".lost.png.x1y2z3.tmp").write_bytes(b"\x89PNG\r\n half a file")  # as a kill mid-write leaves
        server.kill()
    finally:
        server.kill()
    server = ServerProcess("--outputs", str(outputs), port=server.port).start()  # the same port, again
    try:
        again = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"steps": 2, "save_images": True}, timeout=120)
        assert again.status_code == 200
        assert check_outputs(outputs) == 2  # the two finished jobs' images, whole; the partial file gone
    finally:
        server.stop()
