"""The REST API: a Falcon app (`create_app`) served by a Gunicorn master (`server.run`)."""

from streamd.api.app import create_app

__all__ = ["create_app"]
