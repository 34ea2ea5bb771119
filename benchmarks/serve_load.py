"""`latentdiff serve` under load: requests/s, p50/p95 latency and rejects at concurrency 1, 4 and 16.

    python benchmarks/serve_load.py [--seconds 30] [--steps 4] [--queue-size 4] [--concurrency 1 4 16]
                                    [--device cpu|cuda] [--url http://127.0.0.1:7860]

Starts `latentdiff serve` on the default model on a free loopback port (or measures the server at --url). For each
concurrency, that many clients post txt2img (--steps steps, the model's size, a random seed) back to back for
--seconds; a client answered 503 waits its Retry-After (at most 2 s), as a polite client does. Per concurrency:
completed requests/s, p50/p95 latency of the completed ones, rejects (503s) and other failures, and the latency of
/sdapi/v1/progress polled every 100 ms from another process (p50 / max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time

import httpx

POLL = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
took = []
with httpx.Client(base_url=url, timeout=10) as http:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t = time.monotonic()
        http.get("/sdapi/v1/progress")
        took.append(time.monotonic() - t)
        time.sleep(0.1)
print(json.dumps(took))
"""


def start_server(args) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", "serve", "--port", "0", "--device", args.device,
                             "--queue-size", str(args.queue_size), "--outputs", "/tmp/latentdiff-serve-bench"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("latentdiff serve: http://"):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split()[2].rstrip("/")


async def client(url: str, deadline: float, steps: int, rng: random.Random, out: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        while time.monotonic() < deadline:
            start = time.monotonic()
            r = await http.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": steps,
                                                            "seed": rng.randrange(2**31)})
            if r.status_code == 200:
                out["latency"].append(time.monotonic() - start)
            elif r.status_code == 503:
                out["rejects"] += 1
                await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", 1))))
            else:
                out["failures"] += 1


def run(url: str, concurrency: int, seconds: float, steps: int) -> dict:
    poller = subprocess.Popen([sys.executable, "-c", POLL, url, str(seconds)], stdout=subprocess.PIPE, text=True)
    out = {"latency": [], "rejects": 0, "failures": 0}
    start = time.monotonic()

    async def clients():
        rngs = [random.Random(i) for i in range(concurrency)]
        await asyncio.gather(*(client(url, start + seconds, steps, rng, out) for rng in rngs))

    asyncio.run(clients())
    wall = time.monotonic() - start  # the last requests may finish after the deadline
    progress = json.loads(poller.communicate()[0])
    lat = sorted(out["latency"])
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan"))
    return {"concurrency": concurrency, "completed": len(lat), "req/s": len(lat) / wall, "p50 s": pct(0.5),
            "p95 s": pct(0.95), "rejects": out["rejects"], "failures": out["failures"],
            "progress p50 ms": 1000 * statistics.median(progress), "progress max ms": 1000 * max(progress)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--queue-size", type=int, default=4)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--url", help="an already running server (its own queue size applies)")
    args = p.parse_args()
    proc, url = (None, args.url) if args.url else start_server(args)
    try:
        httpx.post(f"{url}/sdapi/v1/txt2img", json={"steps": 1}, timeout=300)  # warm up
        rows = [run(url, c, args.seconds, args.steps) for c in args.concurrency]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(f"txt2img, {args.steps} steps, queue size {args.queue_size}, {args.seconds:g} s per row, "
          f"{os.cpu_count()} CPUs")
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
