"""The Falcon application: routes, who may call them (auth.py), JSON through orjson, one JSON shape for errors."""

from __future__ import annotations

import falcon
import falcon.media
import orjson
from pymongo.errors import PyMongoError

from streamd.api import errors
from streamd.api.aggregates import AggregatesResource
from streamd.api.auth import Authorization, scope_of
from streamd.api.backends import Backends
from streamd.api.dashboard import DashboardResource, StaticResource, load_assets
from streamd.api.health import HealthResource, ReadyResource
from streamd.api.lag import GroupLag
from streamd.api.messages import MessageResource, MessagesResource
from streamd.api.metrics import MetricsResource, RequestMetrics
from streamd.api.openapi import OpenApiResource, build
from streamd.api.stats import StatsResource
from streamd.api.stream import LiveStreams, StreamResource
from streamd.config import Config


def create_app(
    config: Config,
    backends: Backends | None = None,
    streams: LiveStreams | None = None,
    authorization: Authorization | None = None,
) -> falcon.App:
    """The WSGI app of one process; pass `backends` to control (and close) its clients yourself,
    `streams` to learn when the process stops serving (see server.post_worker_init), and `authorization`
    to give it keys and a rate limiter of your own (tests)."""
    backends = backends or Backends(config)
    streams = streams or LiveStreams(config.api)
    # Counting first: a refused request is counted too, under its route and its 401, 403 or 429.
    middleware = [RequestMetrics(), authorization or Authorization(config)]
    app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=middleware)

    json = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.req_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json})
    app.resp_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json})
    # Falcon drops `?limit=` silently by default; an empty value is a mistake worth a 400.
    app.req_options.keep_blank_qs_values = True

    lag = GroupLag(config, lambda: backends.kafka)
    analytics = config.analytics
    analyzer_lag = GroupLag(config, lambda: backends.kafka, analytics.group) if analytics.enabled else None
    assets = load_assets()
    routes = {
        "/messages": MessagesResource(backends),
        "/messages/{message_id}": MessageResource(backends),
        "/aggregates": AggregatesResource(backends),
        "/health": HealthResource(),
        "/ready": ReadyResource(backends, lag),
        "/metrics": MetricsResource(config, lag, analyzer_lag),
        "/stats": StatsResource(backends, lag, analyzer_lag),
        "/stream": StreamResource(backends, streams),
        "/": DashboardResource(assets),
        "/static/{name}": StaticResource(assets),
    }
    # The document says who may call each operation from the declarations the middleware enforces; they are
    # class attributes, so the document's own resource is read before it exists.
    declared = {path: type(resource) for path, resource in routes.items()} | {"/openapi.json": OpenApiResource}
    document = build(config, backends.collections, assets, lambda path, method: scope_of(declared[path], method))
    routes["/openapi.json"] = OpenApiResource(document)
    for path, resource in routes.items():
        app.add_route(path, resource)

    app.set_error_serializer(errors.serialize_error)
    # Falcon picks the handler of the most specific class in the exception's MRO.
    app.add_error_handler(Exception, errors.unexpected_error)
    app.add_error_handler(falcon.HTTPRouteNotFound, errors.route_not_found)
    app.add_error_handler(PyMongoError, errors.store_error)
    return app
