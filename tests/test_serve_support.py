"""Shared by the serve tests: the default model loaded once per test session, apps over it, a live uvicorn server
on a free loopback port, and PNG helpers. (No tests here.)"""

from __future__ import annotations

import base64
import functools
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve tests need the serve extra: pip install -e '.[serve]'")

from latentdiff.models import DEFAULT_MODEL  # noqa: E402
from latentdiff.pipelines import Pipeline  # noqa: E402
from latentdiff.serve import ServerConfig, create_app  # noqa: E402

STEPS = 4  # few steps and the model's 64 px: each image takes well under a second on 2 cores


@functools.cache
def shared_pipeline() -> Pipeline:
    """The offline default model on the CPU, loaded once for every serve test module."""
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        pytest.skip(f"the default model is not in {DEFAULT_MODEL}; build it with `latentdiff shapes build`")
    return Pipeline.from_pretrained(DEFAULT_MODEL, device="cpu")


def make_app(**config):
    """An app over the shared model; ``outputs`` off unless given. Close it with ``close(app)``."""
    config.setdefault("outputs", None)
    return create_app(shared_pipeline(), ServerConfig(**config), device="cpu")


def close(app) -> None:
    app.state.server.close()


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    assert image.format == "PNG"
    return image


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


class LiveServer:
    """``app`` served by uvicorn on a thread, on a free loopback port (``url``)."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        close(self.app)


class ServerProcess:
    """`latentdiff serve` in a subprocess on a free loopback port (printed on its first stdout line)."""

    def __init__(self, *args: str, port: int = 0, log=None):
        import sys

        self.command = [sys.executable, "-m", "latentdiff.cli", "serve", "--port", str(port), "--device", "cpu",
                        *args]
        self.log = log  # a file for its stderr
        self.proc, self.url = None, None

    def start(self, timeout: float = 300.0) -> "ServerProcess":
        import os
        import queue
        import subprocess

        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self.log or subprocess.DEVNULL,
                                     text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"`{' '.join(self.command)}` printed no address in {timeout} s") from None
        assert first.startswith("latentdiff serve: http://"), first
        self.url = first.split()[2].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def rss(self) -> int:
        import resource

        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.kill()
