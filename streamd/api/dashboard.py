"""GET / and GET /static/{name}: the dashboard, served by streamd itself so it works with no network.

The files are read once per worker from the package (streamd/api/static/) and served from memory;
only those files exist, so no request can name a path outside them. The Content-Security-Policy
allows nothing but this origin: a script or stylesheet from anywhere else would not even load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import falcon

from streamd.api.auth import READ
from streamd.api.errors import shown
from streamd.api.params import reject_unknown

STATIC = Path(__file__).with_name("static")
PAGE = "dashboard.html"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def read(cls, path: Path) -> Asset:
        body = path.read_bytes()
        return cls(body, TYPES[path.suffix], hashlib.sha256(body).hexdigest()[:16])

    def serve(self, req: falcon.Request, resp: falcon.Response) -> None:
        for name, value in SECURITY_HEADERS.items():
            resp.set_header(name, value)
        resp.etag = self.etag
        # Revalidated on every load: a new streamd version must never run with the previous script.
        resp.cache_control = ["no-cache"]
        if req.if_none_match and any(tag == self.etag for tag in req.if_none_match):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = self.content_type
        resp.data = self.body


def load_assets() -> dict[str, Asset]:
    return {path.name: Asset.read(path) for path in sorted(STATIC.iterdir()) if path.suffix in TYPES}


class DashboardResource:
    # Read like the data it shows: on a shared network a browser asks for the key (Basic auth's password) here,
    # then sends it with every request of the page, its live feed included.
    scopes = {"GET": READ}

    def __init__(self, assets: dict[str, Asset]) -> None:
        self.page = assets[PAGE]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ())
        self.page.serve(req, resp)


class StaticResource:
    scopes = {"GET": READ}

    def __init__(self, assets: dict[str, Asset]) -> None:
        self.assets = assets

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        asset = self.assets.get(name)
        if asset is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"the dashboard has no file named {shown(name)}.")
        asset.serve(req, resp)
