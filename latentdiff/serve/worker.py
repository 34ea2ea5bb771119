"""One worker thread runs jobs one at a time on the device; a bounded queue waits in front of it.

A job is a function of the :class:`Job` itself, run on the worker thread. The sampler calls
:meth:`Job.callback` after every step: it counts the step (progress), keeps a preview of the current prediction of
the final latents when someone is watching (``/progress``), and raises :class:`Interrupted` with those latents
once the job is told to stop (interrupt, or its client left): the job then decodes what it has. A job still
waiting when its client leaves is dropped from the queue.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

log = logging.getLogger("latentdiff.serve")


class QueueFull(Exception):
    """The queue holds as many waiting jobs as allowed; ``retry_after`` is a guess in seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} jobs are waiting, the most it queues; retry in "
                         f"{retry_after} s")
        self.waiting, self.retry_after = waiting, retry_after


class Interrupted(Exception):
    """Raised from a sampler callback to end a job at a step; ``latents`` (B, C, h, w) are its current prediction
    of the final latents (or the current latents, for a sampler that reports none), ``step`` the steps done."""

    def __init__(self, latents: torch.Tensor, step: int):
        super().__init__(f"interrupted after step {step}")
        self.latents, self.step = latents, step


@dataclass(eq=False)
class Job:
    """One request's work: ``run(job)`` on the worker thread; ``batches`` × ``steps`` sampling steps expected."""

    kind: str
    run: Callable[["Job"], Any]
    batches: int = 1
    steps: int = 0  # sampling steps of one batch, all passes together
    future: Future = field(default_factory=Future)
    stop: threading.Event = field(default_factory=threading.Event)
    interrupted: bool = False  # stopped by an interrupt (not by its client leaving)
    batch: int = 0  # progress, written by the worker thread
    step: int = 0
    started: float = 0.0
    preview: Optional[Callable[[torch.Tensor], Optional[np.ndarray]]] = None  # latents (C, h, w) → (H, W, 3)
    preview_wanted: Callable[[], bool] = lambda: False
    latest_preview: Optional[np.ndarray] = None

    def begin_batch(self, index: int) -> None:
        self.batch, self.step = index, 0

    def callback(self, info: dict) -> None:
        """The sampler's per-step report (``{"i", "t", "x", "denoised"}``)."""
        self.step += 1
        latents = info.get("denoised", info.get("x"))
        if latents is not None and self.preview is not None and self.preview_wanted():
            image = self.preview(latents[0])
            if image is not None:
                self.latest_preview = image
        if self.stop.is_set() and latents is not None:
            raise Interrupted(latents, self.step)


class Worker:
    """The queue and its one worker thread. ``submit`` raises :class:`QueueFull` past ``queue_size`` waiting jobs
    (the running one not counted); ``interrupt`` stops the running job at its next step; ``cancel`` drops a
    waiting job or stops a running one; ``progress`` is A1111's progress snapshot."""

    def __init__(self, queue_size: int, preview_every: float = 2.0):
        self.queue_size = queue_size
        self.preview_every = preview_every
        self.preview: Optional[Callable[[torch.Tensor], Optional[np.ndarray]]] = None  # set with the model
        self._waiting: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._current: Optional[Job] = None
        self._durations: collections.deque[float] = collections.deque(maxlen=16)
        self._preview_until = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="latentdiff-worker", daemon=True)
        self.done = 0  # jobs finished, for tests and logs

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, drop the waiting ones, stop the running one at its next step (it answers with what it
        has), and wait up to ``timeout`` seconds for the thread to end (0: do not wait)."""
        with self._cv:
            self._closed = True
            for job in self._waiting:
                job.future.cancel()
            self._waiting.clear()
            if self._current is not None:
                self._current.stop.set()
            self._cv.notify_all()
        if timeout and self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._closed:
                raise QueueFull(len(self._waiting), 1)
            if len(self._waiting) - (self._current is None) >= self.queue_size:  # idle: the first one runs now
                raise QueueFull(len(self._waiting), self.retry_after())
            self._waiting.append(job)
            self._cv.notify()
        return job

    def retry_after(self) -> int:
        """Seconds until a place frees, from the mean time of recent jobs (1 s before any ran)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean))

    def cancel(self, job: Job) -> None:
        """Drop ``job`` if it waits; stop it at its next step if it runs."""
        with self._cv:
            if job in self._waiting:
                self._waiting.remove(job)
                job.future.cancel()
                log.info("dropped a waiting %s job: its client left", job.kind)
                return
            if job is self._current:
                job.stop.set()

    def interrupt(self) -> bool:
        """Stop the running job at its next step (it returns what it has); False when none runs."""
        with self._cv:
            job = self._current
            if job is None:
                return False
            job.interrupted = True
            job.stop.set()
            return True

    def progress(self, preview: bool = True) -> dict:
        """A snapshot: A1111's progress fields and state, the latest preview (an array, or None), the queue.
        ``preview``: the caller shows previews, so keep making them for ``preview_every`` seconds."""
        if preview:
            self._preview_until = time.monotonic() + self.preview_every
        with self._cv:
            job, waiting = self._current, len(self._waiting)
            if job is None:
                state = dict(skipped=False, interrupted=False, job="", job_count=0, job_no=0, sampling_step=0,
                             sampling_steps=0, queued=waiting)
                return dict(progress=0.0, eta_relative=0.0, state=state, preview=None)
            batch, step, steps, batches = job.batch, job.step, max(job.steps, 1), max(job.batches, 1)
            state = dict(skipped=False, interrupted=job.interrupted, job=job.kind, job_count=batches,
                         job_no=batch, sampling_step=step, sampling_steps=job.steps, queued=waiting)
            preview, started = job.latest_preview, job.started
        fraction = min(1.0, (batch + min(step, steps) / steps) / batches)
        elapsed = time.monotonic() - started
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return dict(progress=fraction, eta_relative=eta, state=state, preview=preview)

    def _previews_wanted(self) -> bool:
        return time.monotonic() < self._preview_until

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue
                self._current = job
                job.started = time.monotonic()
                job.preview, job.preview_wanted = self.preview, self._previews_wanted
            try:
                job.future.set_result(job.run(job))
            except Exception as error:  # the job's own failure goes to its requester; the worker carries on
                job.future.set_exception(error)
            finally:
                with self._cv:
                    self._current = None
                    self._durations.append(time.monotonic() - job.started)
                    self.done += 1
