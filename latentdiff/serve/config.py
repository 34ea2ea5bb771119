"""The server's settings: limits on what one request may ask, the queue bound, credentials, CORS, folders; every
default in one place. Safe by default: loopback only, CORS off, limits on."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


@dataclass
class ServerConfig:
    """What the server allows and where it writes; see ``latentdiff serve --help`` for each."""

    queue_size: int = 4  # jobs waiting behind the running one; one more is answered 503 with Retry-After
    max_size: int = 1024  # pixels, each side of an output image (after hires fix) and of an input image
    max_steps: int = 150  # sampling steps of one pass
    max_batch: int = 8  # images of one request: batch_size × n_iter
    max_body_mb: float = 32.0  # request body, in MiB
    api_auth: Optional[str] = None  # "USER:PASS[,USER2:PASS2]": HTTP Basic on every route, as A1111's --api-auth
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers (browsers block other origins)
    outputs: Optional[Path] = Path("outputs/serve")  # where images asked to be saved (save_images) are written
    models_dir: Optional[Path] = None  # the folder whose model folders POST /sdapi/v1/options may switch to
    preview_every: float = 2.0  # seconds a /progress poll keeps live previews on

    def __post_init__(self):
        for name in ("queue_size", "max_size", "max_steps", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "queue_size" else 1):
                raise ValueError(f"{name}={value!r} must be a whole number >= {0 if name == 'queue_size' else 1}")
        if not self.max_body_mb > 0:
            raise ValueError(f"max_body_mb={self.max_body_mb!r} must be > 0")
        if self.api_auth is not None:
            parse_credentials(self.api_auth)
        if self.models_dir is not None and not Path(self.models_dir).is_dir():
            raise ValueError(f"models_dir '{self.models_dir}' is not a folder; pass a folder of model folders")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def credentials(self) -> dict[str, str]:
        return parse_credentials(self.api_auth) if self.api_auth else {}


def parse_credentials(text: str) -> dict[str, str]:
    """{user: password} of "USER:PASS[,USER2:PASS2]" (A1111's --api-auth format); a ValueError naming the fault."""
    found = {}
    for item in text.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"api_auth item {item!r} must be USER:PASS (several joined by commas), both non-empty")
        found[user] = password
    return found


def is_loopback(host: str) -> bool:
    """True for an address or name that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything
