"""One worker, a bounded queue: past queue_size waiting jobs a request is 503 with Retry-After; interrupt stops the
running job at its next step and it answers with what it has; /progress answers while a job runs, with a live
preview."""

import json
import threading
import time

import numpy as np
import pytest
import torch
from test_serve_support import close, decode_png, make_app

from latentdiff.serve.worker import Interrupted, Job, QueueFull, Worker

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_queue_holds_queue_size_jobs_behind_the_running_one():
    worker = Worker(queue_size=2).start()
    gate, ran = threading.Event(), []

    def job(name, block=False):
        return Job(name, lambda j: (gate.wait(10) if block else True, ran.append(name))[1])

    first = worker.submit(job("first", block=True))
    wait_for(lambda: worker.progress()["state"]["job"] == "first")
    second, third = worker.submit(job("second")), worker.submit(job("third"))
    assert worker.progress()["state"]["queued"] == 2
    with pytest.raises(QueueFull) as full:
        worker.submit(job("fourth"))
    assert full.value.retry_after >= 1 and "2 jobs are waiting" in str(full.value)
    worker.cancel(second)  # its client left: dropped, never run
    assert second.future.cancelled()
    worker.submit(job("fifth"))  # its place is free again
    gate.set()
    for j in (first, third):
        j.future.result(10)
    wait_for(lambda: worker.done == 3)
    assert ran == ["first", "third", "fifth"]
    worker.close()


def test_interrupt_stops_the_running_job_at_its_next_step_with_its_latents():
    worker = Worker(queue_size=1).start()

    def sample(job):  # a sampler's loop: reports every step through the callback
        x = torch.zeros(1, 4, 2, 2)
        for i in range(10_000):
            time.sleep(0.001)
            job.callback({"i": i, "x": x, "denoised": x + i})
        return "finished"

    job = worker.submit(Job("txt2img", sample, steps=10_000))
    wait_for(lambda: worker.progress()["state"]["sampling_step"] >= 3)
    assert worker.interrupt()
    with pytest.raises(Interrupted) as stopped:
        job.future.result(10)
    assert 3 <= stopped.value.step < 10_000 and stopped.value.latents[0, 0, 0, 0] == stopped.value.step - 1
    assert not worker.interrupt()  # nothing runs now
    worker.close()


def test_progress_preview_busy_and_interrupt_over_http():
    app = make_app(queue_size=0)
    with TestClient(app) as c:
        answer = {}
        request = {"prompt": "a red circle", "steps": 150, "seed": 1, "batch_size": 2}
        running = threading.Thread(target=lambda: answer.update(r=c.post("/sdapi/v1/txt2img", json=request)))
        running.start()
        latencies, seen = [], {}

        def watching():
            start = time.perf_counter()
            seen.update(c.get("/sdapi/v1/progress").json())
            latencies.append(time.perf_counter() - start)
            return seen["state"]["sampling_step"] >= 3 and seen["current_image"]

        wait_for(watching, timeout=120)
        assert seen["state"]["job_count"] == 1 and seen["state"]["sampling_steps"] == 150
        assert 0 < seen["progress"] < 1 and seen["eta_relative"] > 0
        assert decode_png(seen["current_image"]).size == (64, 64)  # the current prediction, VAE-decoded
        busy = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1})  # queue_size 0: nothing may wait
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["detail"]
        assert c.post("/sdapi/v1/interrupt").json() == {}
        running.join(60)
        r = answer["r"]
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["interrupted"] and info["all_seeds"] == [1, 2]
        for b64 in r.json()["images"]:
            image = decode_png(b64)
            step = json.loads(image.text["latentdiff"])["interrupted_at_step"]
            assert 3 <= step < 150 and np.asarray(image).std() > 0
        # in-process, on shared cores; the slow load test holds a separate server to 100 ms throughout
        assert np.median(latencies) < 0.1 and max(latencies) < 2, latencies
        assert c.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    close(app)
