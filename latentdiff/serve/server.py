"""The server's state behind the routes: the loaded model, the worker and its queue, the model catalog, the
options a client may set; submitting a job and waiting for it without holding the event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from fastapi import Request
from starlette.exceptions import HTTPException

from ..pipelines import Pipeline
from .catalog import Catalog, ModelEntry
from .config import ServerConfig
from .preview import VaePreview
from .tasks import load_pipeline, remove_partial_files
from .worker import Job, Worker

log = logging.getLogger("latentdiff.serve")
POLL = 0.25  # seconds between checks that a waiting client is still there


class ClientGone(Exception):
    """The client closed its connection; its job was dropped (or stopped)."""


class Server:
    """One model, one worker. ``pipe`` is replaced only on the worker thread (a model switch is a job too)."""

    def __init__(self, pipe: Pipeline, config: ServerConfig, *, dtype: str = "auto", device: str = "auto"):
        if pipe.components.path is None:
            raise ValueError("the server needs a pipeline loaded from a model folder (Pipeline.from_pretrained)")
        self.pipe, self.config = pipe, config
        self.dtype, self.device = dtype, device
        self.catalog = Catalog(pipe.components.path, config.models_dir)
        self.model: ModelEntry = self.catalog.entry_of(pipe.components.path)
        self.clip_skip: Optional[int] = None  # A1111's CLIP_stop_at_last_layers option; None: the model's
        self.worker = Worker(config.queue_size, config.preview_every)
        self.worker.preview = VaePreview(pipe.components)
        if config.outputs is not None:
            for path in remove_partial_files(config.outputs):
                log.warning("removed '%s', a partial file left by a server that was stopped mid-write", path)
        self.worker.start()

    def close(self) -> None:
        self.worker.close()

    def submit(self, kind: str, run: Callable[[Job], Any], batches: int = 1, steps: int = 0) -> Job:
        """Queue ``run``; :class:`~.worker.QueueFull` (HTTP 503) when the queue is full."""
        return self.worker.submit(Job(kind, run, batches=batches, steps=steps))

    async def finish(self, job: Job, request: Optional[Request] = None) -> Any:
        """The job's result (or its exception), awaited without blocking the event loop; a client that leaves
        has its job dropped from the queue (or stopped, if it runs) and gets :class:`ClientGone`."""
        future = asyncio.wrap_future(job.future)
        while True:
            done, _ = await asyncio.wait({future}, timeout=POLL)
            if done:
                if future.cancelled():
                    raise HTTPException(503, "the server is shutting down; retry once it is back")
                return future.result()
            if request is not None and await request.is_disconnected():
                self.worker.cancel(job)
                raise ClientGone()

    # --- models ------------------------------------------------------------------------------------------------

    def load(self, entry: ModelEntry) -> None:
        """On the worker thread: load ``entry`` (safetensors only), then swap it in."""
        pipe = load_pipeline(entry.path, self.dtype, self.device)
        old, self.pipe, self.model = self.pipe, pipe, entry
        self.worker.preview = VaePreview(pipe.components)
        del old
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("model switched to %s", entry.title)

    def options(self) -> dict:
        """A1111's /sdapi/v1/options, the part that is ours."""
        return {"sd_model_checkpoint": self.model.title, "sd_checkpoint_hash": None,
                "CLIP_stop_at_last_layers": self.clip_skip or self.pipe.defaults.clip_skip,
                "samples_format": "png", "outdir_samples": str(self.config.outputs or "")}

    def set_clip_skip(self, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"CLIP_stop_at_last_layers={value!r} must be a whole number >= 1")
        self.pipe.settings(clip_skip=value)  # validated against the text encoder's layers
        self.clip_skip = value

    @property
    def outputs(self) -> Optional[Path]:
        return self.config.outputs
