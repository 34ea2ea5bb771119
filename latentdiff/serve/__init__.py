"""The local server: an AUTOMATIC1111-compatible HTTP API, our editing endpoint and a web page, on FastAPI.

    app.py       create_app(pipe, config): the routes (/sdapi/v1/..., /latentdiff/v1/edit, the page at /)
    server.py    Server: the loaded model, the worker, the model catalog, options; waiting for a job
    worker.py    Worker: one thread runs jobs one at a time, a bounded queue, progress, interrupt, cancel
    a1111.py     A1111 requests → our settings (validated, within limits, warnings) and A1111's info JSON
    schemas.py   the request and response bodies, as A1111 names their fields
    tasks.py     what a job does: generate batch by batch, edit, switch models, save outputs atomically
    codec.py     base64 images in and out, PNG bytes with their parameters chunk, png-info
    catalog.py   the models a client may switch to (by name, never by path)
    preview.py   live previews: the VAE decode of the current prediction, while someone watches
    http.py      HTTP Basic, the body limit, errors as one-line JSON
    config.py    ServerConfig: limits, queue bound, credentials, CORS, folders
    static/      the page: index.html, app.js, style.css (no CDN, no web fonts)

Needs the ``serve`` extra (``pip install 'latentdiff[serve]'``): fastapi, uvicorn, python-multipart, httpx.
"""

from .config import ServerConfig, is_loopback, parse_credentials

__all__ = ["ServerConfig", "create_app", "is_loopback", "parse_credentials"]


def create_app(*args, **kwargs):
    """:func:`latentdiff.serve.app.create_app` (imported on use: FastAPI is an optional dependency)."""
    from .app import create_app as create

    return create(*args, **kwargs)
