"""`latentdiff serve`: the local server — an A1111-compatible HTTP API and a web page (latentdiff.serve)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from .common import quiet_libraries, resolve_model

log = logging.getLogger("latentdiff.serve")
SWITCH_INTERVAL = 0.001  # s: the GIL passes from the worker to the event loop this often (Python's default: 5 ms)


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local server: A1111-compatible HTTP API and a web page",
                       description="Serve a model over HTTP: AUTOMATIC1111's API (/sdapi/v1/txt2img, img2img, "
                                   "png-info, progress, interrupt, options, ...; clients such as webuiapi work), "
                                   "/latentdiff/v1/edit, the OpenAPI docs at /docs and a web page at /. Jobs run "
                                   "one at a time; a full queue answers 503 with Retry-After. Safe by default: "
                                   "loopback only, CORS off, limits on sizes, steps, batch and body.")
    p.add_argument("--model", default=None, help="diffusers-layout model folder (default: the offline default model)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights and compute dtype (auto: fp16 on CUDA, fp32 on CPU; editing needs fp32)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = CUDA when available")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; any other needs --api-auth or --insecure)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860, as A1111; 0: any free port)")
    p.add_argument("--api-auth", metavar="USER:PASS", help="HTTP Basic credentials for every route, several "
                   "joined by commas (as A1111's --api-auth)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --api-auth")
    p.add_argument("--queue-size", type=int, default=4, help="jobs that may wait behind the running one (default 4)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages of ORIGIN (e.g. http://localhost:3000) to call the API; repeatable "
                        "(default: none)")
    p.add_argument("--outputs", type=Path, default=Path("outputs/serve"),
                   help="folder for images requested with save_images (default outputs/serve)")
    p.add_argument("--max-size", type=int, default=1024, metavar="PX", help="largest image side (default 1024)")
    p.add_argument("--max-steps", type=int, default=150, metavar="N", help="most sampling steps (default 150)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="most images a request (batch_size × n_iter; default 8)")
    p.add_argument("--max-body-mb", type=float, default=32, metavar="N", help="largest request body (default 32)")
    p.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="a folder of model folders that clients may switch to (POST /sdapi/v1/options)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: all cores but one, so the server answers while it computes)")
    p.set_defaults(run=cmd_serve)


def check_exposure(host: str, api_auth, insecure: bool) -> None:
    """A non-loopback address needs credentials or an explicit --insecure (which is said out loud)."""
    from ..serve import is_loopback

    if is_loopback(host) or api_auth:
        return
    if not insecure:
        raise ValueError(f"--host {host} lets other machines use this server; pass --api-auth USER:PASS (HTTP "
                         "Basic) or, to serve it open to anyone who can reach it, --insecure")
    print(f"latentdiff serve: warning: listening on {host} without --api-auth: anyone who can reach this "
          "machine can use the server and its compute", file=sys.stderr)


def listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port or "
                         "--host") from None


def cmd_serve(args) -> int:
    check_exposure(args.host, args.api_auth, args.insecure)
    try:
        import uvicorn
    except ImportError:
        raise ValueError("serve needs FastAPI and uvicorn; install them with pip install 'latentdiff[serve]'") \
            from None
    import torch

    from ..pipelines import Pipeline
    from ..serve import ServerConfig, create_app

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be at least 1")
    config = ServerConfig(queue_size=args.queue_size, max_size=args.max_size, max_steps=args.max_steps,
                          max_batch=args.max_batch, max_body_mb=args.max_body_mb, api_auth=args.api_auth,
                          cors_origins=args.cors_origin, outputs=args.outputs, models_dir=args.models_dir)
    sock = listen(args.host, args.port)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
    sys.setswitchinterval(SWITCH_INTERVAL)
    quiet_libraries()
    pipe = Pipeline.from_pretrained(resolve_model(args.model), dtype=args.dtype, device=args.device)
    app = create_app(pipe, config, dtype=args.dtype, device=args.device)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"latentdiff serve: http://{shown}:{port}/ (model {app.state.server.model.title}, API docs at /docs)",
          flush=True)
    worker = app.state.server.worker

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # Ctrl-C / SIGTERM: the running job answers with what it has, now
            worker.close(timeout=0)
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
    return 0
