"""The Falcon application: routes, who may call them (auth.py), JSON through orjson, one JSON shape for errors."""

from __future__ import annotations

import falcon
import falcon.media
import orjson
from pymongo.errors import PyMongoError

from streamd.api import errors
from streamd.api.aggregates import AggregatesResource
from streamd.api.auth import Authorization
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

    app.add_route("/messages", MessagesResource(backends))
    app.add_route("/messages/{message_id}", MessageResource(backends))
    app.add_route("/aggregates", AggregatesResource(backends))
    app.add_route("/health", HealthResource())
    lag = GroupLag(config, lambda: backends.kafka)
    analytics = config.analytics
    analyzer_lag = GroupLag(config, lambda: backends.kafka, analytics.group) if analytics.enabled else None
    app.add_route("/ready", ReadyResource(backends, lag))
    app.add_route("/metrics", MetricsResource(config, lag, analyzer_lag))
    app.add_route("/stats", StatsResource(backends, lag, analyzer_lag))
    app.add_route("/stream", StreamResource(backends, streams))
    assets = load_assets()
    app.add_route("/", DashboardResource(assets))
    app.add_route("/static/{name}", StaticResource(assets))
    app.add_route("/openapi.json", OpenApiResource(build(config, backends.collections, assets)))

    app.set_error_serializer(errors.serialize_error)
    # Falcon picks the handler of the most specific class in the exception's MRO.
    app.add_error_handler(Exception, errors.unexpected_error)
    app.add_error_handler(falcon.HTTPRouteNotFound, errors.route_not_found)
    app.add_error_handler(PyMongoError, errors.store_error)
    return app
