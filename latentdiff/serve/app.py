"""The FastAPI app: A1111's API where A1111 has the endpoint (``/sdapi/v1/...``, same fields and shapes), ours
for editing (``/latentdiff/v1/edit``), and the web page at ``/`` (package files; nothing from another host).

Generation runs as jobs on one worker thread (:mod:`.worker`); a route validates its request first (a mistake is
a 4xx at once, before queueing), then waits for the job without holding the event loop, so that ``/progress``
and other GETs answer while a job runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from fastapi import Body, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..core.samplers import SAMPLERS
from ..pipelines import Pipeline
from ..pipelines.parameters import A1111_SAMPLERS, parse_parameters
from .a1111 import Work, img2img_work, txt2img_work
from .codec import array_png_base64, decode_base64, read_image, read_mask, text_chunks
from .tasks import edit_work, run_edit, run_generation
from .config import ServerConfig
from .http import BasicAuth, BodyLimit, add_error_handlers
from .schemas import (OPTIONS_HONOURED, EditRequest, EditResponse, GenerationResponse, Img2ImgRequest,
                      PNGInfoRequest, PNGInfoResponse, ProgressResponse, Txt2ImgRequest)
from .server import ClientGone, Server

log = logging.getLogger("latentdiff.serve")
STATIC = Path(__file__).parent / "static"
PREVIEW_SIDE = 256  # pixels, the longer side of a live preview
# the page loads only from this server; images shown from the API's base64 (data:) and downloads (blob:)
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'")
SCHEDULERS = [  # A1111's schedule types that are ours (modules/sd_schedulers.py names and labels)
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
    {"name": "uniform", "label": "Uniform", "aliases": None, "default_rho": -1, "need_inner_model": True},
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
    {"name": "sgm_uniform", "label": "SGM Uniform", "aliases": ["SGMUniform"], "default_rho": -1,
     "need_inner_model": True},
]


def create_app(pipe: Pipeline, config: Optional[ServerConfig] = None, *, dtype: str = "auto",
               device: str = "auto") -> FastAPI:
    """The app serving ``pipe`` (a model loaded from a folder); ``dtype``/``device`` apply to models switched to.
    Its :class:`~.server.Server` is ``app.state.server``; close it (``server.close()``) when done."""
    config = config or ServerConfig()
    server = Server(pipe, config, dtype=dtype, device=device)

    async def lifespan(app):
        yield
        server.close()

    app = FastAPI(title="latentdiff", version=__version__, lifespan=lifespan,
                  description="Stable-Diffusion-format latent diffusion: AUTOMATIC1111-compatible API (/sdapi/v1) "
                              "and image editing by inversion (/latentdiff/v1/edit). Omitted fields take the "
                              "model's defaults; fields that are not ours are named in info's warnings.")
    app.state.server = server
    add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_auth:
        app.add_middleware(BasicAuth, credentials=config.credentials)
    if config.cors_origins:  # outermost: preflights answered before auth
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _page_routes(app)
    _generation_routes(app, server)
    _info_routes(app, server)
    return app


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                            "Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)


async def _wait(server: Server, job, request: Request):
    try:
        return await server.finish(job, request)
    except ClientGone:
        return None


def _echo(req, *drop: str) -> dict:
    """A1111's ``parameters``: the request's own fields as understood (images left out)."""
    return req.model_dump(exclude=set(req.model_extra or ()) | set(drop))


def _generation_routes(app: FastAPI, server: Server) -> None:
    config = server.config

    def job_for(work: Work):
        if work.save and server.outputs is None:
            work.warnings.append("save_images ignored: this server has no outputs folder")
        def run(job):  # the model is read when the job runs: a switch may come between
            return run_generation(job, work, server.pipe, server.model.name, server.outputs)

        return server.submit(work.kind, run, batches=work.n_iter, steps=work.steps_per_batch)

    def respond(outcome, parameters: dict):
        if outcome is None:
            return Response(status_code=499)  # nobody is listening
        return JSONResponse({"images": outcome.images, "parameters": parameters, "info": outcome.info})

    @app.post("/sdapi/v1/txt2img", response_model=GenerationResponse, tags=["A1111"])
    async def txt2img(req: Txt2ImgRequest, request: Request):
        """Text to image (hires fix with ``enable_hr``); A1111's request and response."""
        work = await run_in_threadpool(txt2img_work, req, server.pipe, config, server.clip_skip)
        return respond(await _wait(server, job_for(work), request), _echo(req))

    @app.post("/sdapi/v1/img2img", response_model=GenerationResponse, tags=["A1111"])
    async def img2img(req: Img2ImgRequest, request: Request):
        """Image to image; with ``mask``, inpainting (white or opaque = repaint)."""
        def prepare():
            if not req.init_images:
                raise ValueError("init_images is empty; send one base64 image to start from")
            image = read_image(req.init_images[0], "init_images[0]", config.max_size)
            mask, notes = (read_mask(req.mask, "mask", config.max_size) if req.mask else (None, []))
            work = img2img_work(req, server.pipe, config, image, mask, server.clip_skip)
            work.warnings += notes
            return work

        work = await run_in_threadpool(prepare)
        drop = () if req.include_init_images else ("init_images", "mask")
        return respond(await _wait(server, job_for(work), request), _echo(req, *drop))

    @app.post("/latentdiff/v1/edit", response_model=EditResponse, tags=["latentdiff"])
    async def edit(req: EditRequest, request: Request):
        """Edit a real image: invert it with ``source_prompt`` (``method``), sample ``target_prompt`` with
        prompt-to-prompt attention control (``latentdiff edit``)."""
        def prepare():
            image = read_image(req.image, "image", config.max_size)
            return edit_work(req, server.pipe, config, image)

        work = await run_in_threadpool(prepare)
        job = server.submit("edit", lambda job: run_edit(job, work, server.pipe), steps=work.steps)
        outcome = await _wait(server, job, request)
        if outcome is None:
            return Response(status_code=499)
        return JSONResponse({"image": outcome.images[0], "info": outcome.info})

    @app.post("/sdapi/v1/interrupt", tags=["A1111"])
    async def interrupt():
        """Stop the running job at its next step; it answers with what it has (its latents decoded)."""
        server.worker.interrupt()
        return {}

    @app.post("/sdapi/v1/options", tags=["A1111"])
    async def set_options(request: Request, options: dict[str, Any] = Body(...)):
        """``sd_model_checkpoint``: switch to a model of GET /sdapi/v1/sd-models (by title, name or hash);
        ``CLIP_stop_at_last_layers``: the clip skip of requests that do not set it. Other options are ignored."""
        ignored = [key for key in options if key not in OPTIONS_HONOURED]
        entry = None
        if options.get("sd_model_checkpoint") is not None:
            try:  # in a thread: a model folder is hashed the first time it is listed
                entry = await run_in_threadpool(server.catalog.find, options["sd_model_checkpoint"])
            except ValueError as error:
                if type(error) is ValueError:  # a path or an empty name: no model name at all
                    raise HTTPException(400, str(error)) from None
                raise
        if "CLIP_stop_at_last_layers" in options:
            server.set_clip_skip(options["CLIP_stop_at_last_layers"])
        if entry is not None and entry.path != server.model.path:
            await _wait(server, server.submit("load-model", lambda job: server.load(entry)), request)
        return {"warning": f"not ours, ignored: {', '.join(ignored)}"} if ignored else {}


def _info_routes(app: FastAPI, server: Server) -> None:
    config = server.config

    @app.get("/sdapi/v1/progress", response_model=ProgressResponse, tags=["A1111"])
    async def progress(skip_current_image: bool = False):
        """The running job's progress (0..1), ETA, state (job_count, sampling_step, ...; ``queued``: jobs
        waiting) and a live preview (the current prediction of the image, from the latents)."""
        snap = server.worker.progress(preview=not skip_current_image)
        preview = snap.pop("preview")
        if preview is not None and not skip_current_image:
            h, w = preview.shape[:2]
            scale = min(1.0, PREVIEW_SIDE / max(h, w))
            snap["current_image"] = array_png_base64(preview, (round(w * scale), round(h * scale)))
        else:
            snap["current_image"] = None
        snap["textinfo"] = None
        return JSONResponse(snap)

    @app.post("/sdapi/v1/png-info", response_model=PNGInfoResponse, tags=["A1111"])
    async def png_info(req: PNGInfoRequest):
        """The generation parameters an image carries: A1111's text (``info``), parsed (``parameters``), and
        every other text chunk (``items``)."""
        def read():
            data = decode_base64(req.image, "image")
            text, items = text_chunks(data, "image", 4 * config.max_size)
            parameters = parse_parameters(text) if text.strip() else {}
            if "Size" in parameters and "x" in parameters["Size"]:  # A1111 also splits it
                parameters["Size-1"], _, parameters["Size-2"] = parameters["Size"].partition("x")
            return {"info": text, "items": items, "parameters": parameters}

        return await run_in_threadpool(read)

    @app.get("/sdapi/v1/samplers", tags=["A1111"])
    async def samplers():
        """A1111's names of our samplers; ``aliases`` are our names (also accepted as sampler_name)."""
        grouped: dict[str, list[str]] = {}
        for ours, (name, _) in A1111_SAMPLERS.items():
            grouped.setdefault(name, []).append(ours)
        return [{"name": name, "aliases": aliases, "options": {}} for name, aliases in grouped.items()]

    @app.get("/sdapi/v1/schedulers", tags=["A1111"])
    async def schedulers():
        """The schedule types that are ours: Automatic (the sampler's own), Uniform, Karras, SGM Uniform."""
        return SCHEDULERS

    @app.get("/sdapi/v1/sd-models", tags=["A1111"])
    async def sd_models():
        """The model the server started with and the model folders of its --models-dir."""
        return [entry.item() for entry in await run_in_threadpool(server.catalog.entries)]

    @app.post("/sdapi/v1/refresh-checkpoints", tags=["A1111"])
    async def refresh_checkpoints():
        return {}  # the catalog is read afresh on every request

    @app.get("/sdapi/v1/options", tags=["A1111"])
    async def get_options():
        return server.options()

    @app.get("/sdapi/v1/scripts", tags=["A1111"])
    async def scripts():
        return {"txt2img": [], "img2img": []}  # no A1111 scripts or extensions

    @app.get("/latentdiff/v1/config", tags=["latentdiff"])
    async def page_config():
        """What the web page needs: the model's defaults, the samplers, the server's limits."""
        pipe = server.pipe
        d = pipe.settings()
        listed = [{"name": ours, "sampler_name": name, "scheduler": schedule or "Automatic",
                   "label": SAMPLERS[ours].label} for ours, (name, schedule) in A1111_SAMPLERS.items()
                  if ours in SAMPLERS]
        return {"model": server.model.title, "vae_factor": pipe.components.vae_scale_factor,
                "defaults": {"steps": d.steps, "cfg_scale": d.guidance, "sampler": d.sampler, "width": d.width,
                             "height": d.height, "negative_prompt": d.negative_prompt},
                "limits": {"max_size": config.max_size, "max_steps": config.max_steps,
                           "max_batch": config.max_batch, "max_body_mb": config.max_body_mb,
                           "queue_size": config.queue_size},
                "samplers": listed}
