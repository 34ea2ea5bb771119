"""Bulk generation: job files, one task per image, batches of bounded size, and resuming a job.

A job file is plain text (one prompt a line) or JSON Lines (``.jsonl``, or any file whose first non-blank line
starts with ``{``): per line a ``prompt`` and any of ``negative_prompt``, ``seed``, ``steps``, ``guidance``,
``sampler``, ``width``, ``height``, ``num_images``, ``clip_skip``, ``prompt_syntax`` and ``output`` (a file name stem). A malformed line is reported
with its line number and skipped; the others run.

Every image is one :class:`Task` (settings, prompt, seed, output path), in job order; image i of a line uses that
line's seed + i (default: the job's seed plus the image's index in the job), so that results do not depend on
the batch size. Consecutive tasks with the same settings and consecutive seeds form a batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

from .settings import GenerationConfig

JOB_KEYS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "width", "height", "num_images",
            "clip_skip", "prompt_syntax", "output")
GRID_LIMIT = 64  # a grid is written for at most this many images (all of a job's images are held for it)
MAX_LATENT_PIXELS = 64 * 64 * 8  # CUDA's default batch: 8 images of 64×64 latents (SD at 512 px), scaled by area


@dataclass
class JobLine:
    """One line of a job: its prompt and the settings it changes (None: the job's)."""

    line: int
    prompt: str
    overrides: dict
    output: Optional[str] = None


@dataclass
class Task:
    """One image to make: everything that decides its pixels, and where it goes."""

    cfg: GenerationConfig  # num_images 1, seed the image's own
    prompt: str
    path: Path


def read_job(path: Path) -> tuple[list[JobLine], list[str]]:
    """(good lines, one message per bad line) of a job file; a file that cannot be read at all is a ValueError."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read job file '{path}': {error}") from None
    first = next((line.strip() for line in lines if line.strip()), "")
    structured = str(path).endswith(".jsonl") or first.startswith("{")
    good, bad = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if not structured:
            good.append(JobLine(number, text.strip(), {}))
            continue
        try:
            good.append(_json_line(number, text))
        except ValueError as error:
            bad.append(f"'{path}' line {number}: {error}; skipped")
    return good, bad


def _json_line(number: int, text: str) -> JobLine:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(row, dict):
        raise ValueError("must be a JSON object such as {\"prompt\": \"a red circle\", \"seed\": 3}")
    unknown = sorted(set(row) - set(JOB_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(JOB_KEYS)}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("needs a non-empty \"prompt\"")
    types = {f.name: f.type for f in fields(GenerationConfig)}
    overrides = {}
    for key, value in row.items():
        if key in ("prompt", "output") or value is None:
            continue
        wanted = (str,) if key in ("negative_prompt", "sampler", "prompt_syntax") else (float, int) if key == "guidance" else (int,)
        if isinstance(value, bool) or not isinstance(value, wanted) or key not in types:
            raise ValueError(f"\"{key}\": {json.dumps(value)} must be {'text' if wanted == (str,) else 'a number'}")
        overrides[key] = float(value) if key == "guidance" else value
    output = row.get("output")
    if output is not None and (not isinstance(output, str) or not output or os.sep in output or output.startswith(".")):
        raise ValueError(f"\"output\": {json.dumps(output)} must be a file name stem (no folders), e.g. \"castle\"")
    return JobLine(number, prompt.strip(), overrides, output)


def tasks(lines: list[JobLine], base: GenerationConfig, resolve, output: Path,
          source: str = "job") -> tuple[list[Task], list[str]]:
    """(every image of the job in order, one message per line skipped). ``resolve(**overrides)`` validates a line's
    settings (the pipeline's ``settings``); ``output`` is the path of a single image or the base of numbered ones."""
    resolved, bad = [], []
    for line in lines:
        try:
            cfg = resolve(**{**_explicit(base), **line.overrides}) if line.overrides else base
        except ValueError as error:
            bad.append(f"'{source}' line {line.line}: {error}; skipped")
            continue
        resolved.append((line, cfg))
    total = sum(cfg.num_images for _, cfg in resolved)
    digits = max(3, len(str(total - 1)))
    out, index = [], 0
    for line, cfg in resolved:
        first_seed = cfg.seed if "seed" in line.overrides else base.seed + index
        for j in range(cfg.num_images):
            if line.output:
                name = f"{line.output}.png" if cfg.num_images == 1 else f"{line.output}-{j:0{digits}d}.png"
                path = output.parent / name if output.suffix else output / name
            elif total == 1:
                path = output
            else:
                path = output.with_name(f"{output.stem}-{index:0{digits}d}.png")
            out.append(Task(replace(cfg, seed=first_seed + j, num_images=1), line.prompt, path))
            index += 1
    return out, bad


def _explicit(cfg: GenerationConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def batches(work: list[Task], size: int, group: Optional[Callable[[Task], object]] = None) -> Iterator[list[Task]]:
    """Runs of at most ``size`` consecutive tasks with equal settings, consecutive seeds and equal ``group(task)``
    (the pipeline's chunk count of the prompt: a batch pads its prompts to the longest)."""
    run: list[Task] = []
    group = group or (lambda task: None)
    for task in work:
        if run and (len(run) == size or replace(task.cfg, seed=0) != replace(run[0].cfg, seed=0)
                    or task.cfg.seed != run[-1].cfg.seed + 1 or group(task) != group(run[0])):
            yield run
            run = []
        run.append(task)
    if run:
        yield run


def default_batch_size(cfg: GenerationConfig, factor: int, cuda: bool) -> int:
    """What fits, as a rule: on CUDA 8 images of 64×64 latents (Stable Diffusion at 512 px), more or fewer in
    proportion to the latent area, between 1 and 32; on a CPU 4 (larger batches are not faster there)."""
    if not cuda:
        return 4
    area = (cfg.height // factor) * (cfg.width // factor)
    return max(1, min(32, MAX_LATENT_PIXELS // area))


def already_made(task: Task, expected: dict, overwrite: bool) -> bool:
    """True when ``task.path`` is a PNG made with exactly ``expected`` parameters (skip it); False when there is
    no file (or ``overwrite``); a ValueError naming the file when it holds another image."""
    from .images import read_params

    if overwrite or not task.path.exists():
        return False
    try:
        found = read_params(task.path)
    except (OSError, KeyError, ValueError):
        found = None
    if found == json.loads(json.dumps(expected)):
        return True
    raise ValueError(f"'{task.path}' exists and was made with other parameters (or is not ours); pass --overwrite "
                     "to replace it, or another --output")
