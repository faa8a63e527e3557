"""Secrets hidden wherever streamd shows its config: `streamd config`, error sentences and log lines.

A config file holds credentials (the password in mongodb.uri, SASL and TLS passwords in kafka.client),
and what streamd prints ends up in terminals, journald and bug reports.  Everything that shows config
values goes through `shown_config` or `masked_uri`; the config itself is never altered.

Log lines are masked by value instead, by streamd.masking.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from streamd.config import Config, to_mapping
from streamd.masking import MASK

# librdkafka properties that hold a secret themselves: every *password* and *secret* (sasl.password,
# ssl.key.password, ssl.keystore.password, ssl.truststore.password, sasl.oauthbearer.client.secret),
# an inline private key, and the OAUTHBEARER config string, which carries the token's claims.
SECRET_WORDS = ("password", "secret")
SECRET_KEYS = {"ssl.key.pem", "sasl.oauthbearer.config"}
# Connection-string options that carry a password (tlsCertificateKeyFilePassword, …).
SECRET_OPTION = re.compile(r"([?&][^=&]*(?:password|secret)[^=&]*=)[^&]*", re.IGNORECASE)


def shown_config(config: Config) -> dict[str, Any]:
    """The config as `to_mapping` gives it, with every secret replaced by ****."""
    shown = to_mapping(config)
    shown["mongodb"]["uri"] = masked_uri(config.mongodb.uri)
    shown["kafka"]["client"] = {key: masked_property(key, value) for key, value in config.kafka.client.items()}
    for name, section in shown.items():
        value = getattr(config, name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            if f.metadata.get("secret") and section.get(f.name) is not None:
                section[f.name] = MASK
    return shown


def masked_uri(uri: str) -> str:
    """mongodb://user:secret@host/?…  →  mongodb://user:****@host/?…; a URI without a password is unchanged."""
    scheme, separator, rest = uri.partition("://")
    if separator and "@" in rest:
        # The last @ ends the credentials: a password must percent-encode its own @, and if a careless
        # one did not, masking too much beats showing a part of it.
        userinfo, _, hosts = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        uri = f"{scheme}://{user}{colon and ':' + MASK}@{hosts}"
    return SECRET_OPTION.sub(lambda match: match.group(1) + MASK, uri)


def masked_property(key: str, value: Any) -> Any:
    """A kafka.client value as it may be shown: **** for a property that holds a secret."""
    name = key.lower()
    return MASK if name in SECRET_KEYS or any(word in name for word in SECRET_WORDS) else value
