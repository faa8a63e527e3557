"""How streamd's clients prove who they are and whom they talk to: the security keys of kafka and mongodb
(with the secrets config_secrets.py read from their *_file keys), and the local stack's own credentials
when `stack.security` is tls, whose files (StackCredentials) stack/tls.py makes.

Two functions decide everything a client gets, and every client goes through them:

- `kafka_security(config.kafka)`: librdkafka properties, merged by streamd.kafka.client_settings as
  role defaults < these < kafka.client < the role's required properties;
- `mongo_client(config.mongodb, **options)`: the one way streamd makes a MongoClient; the keys' settings
  are passed as keyword arguments, which pymongo lets override the same options in mongodb.uri.

In each, a key the user set wins over the local stack's value, key by key: `stack: {security: tls}` alone
is enough on a laptop, and a user who sets kafka.sasl_username keeps the stack's CA.  Every secret these
functions hand out is remembered by streamd.masking, so no log line of this process shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamd.config_file import ConfigError
from streamd.masking import remember_secret

if TYPE_CHECKING:
    import pymongo

    from streamd.config import KafkaConfig, MongoConfig

USER = "streamd"  # the SCRAM user on the local Kafka and the user on the local store
STACK_KAFKA_PROTOCOL = "SASL_SSL"
STACK_KAFKA_MECHANISM = "SCRAM-SHA-512"
STACK_STORE_AUTH_SOURCE = "admin"  # FerretDB's --setup-database and mongod's first user both live there


@dataclass(frozen=True)
class StackCredentials:
    """The files of one state dir's TLS material; `ensure` makes them, the clients only read them."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def key_and_cert_file(self) -> Path:
        """The key, then the certificate: Kafka's PEM keystore and mongod's --tlsCertificateKeyFile."""
        return self.directory / "server-key-and-cert.pem"

    @property
    def kafka_password_file(self) -> Path:
        return self.directory / "kafka.password"

    @property
    def store_password_file(self) -> Path:
        return self.directory / "store.password"

    def exists(self) -> bool:
        return self.ca_file.is_file()

    def kafka_password(self) -> str:
        return _first_line(self.kafka_password_file)

    def store_password(self) -> str:
        return _first_line(self.store_password_file)


class CredentialsMissing(Exception):
    """The stack's TLS material is not there (yet); the message says how to make it."""


def _first_line(path: Path) -> str:
    try:
        line = path.read_text(encoding="utf-8").partition("\n")[0].strip()
    except OSError as exc:
        raise CredentialsMissing(
            f"stack.security is tls but the local stack's {path.name} in {path.parent} cannot be read "
            f"({exc.strerror}); start the local stack once (streamd start or streamd stack up) to make it, or, "
            f"if it was deleted while the servers' data was kept, delete {path.parent.parent} to start over."
        ) from None
    if not line:
        raise CredentialsMissing(f"{path} is empty; delete {path.parent.parent} to make a new local stack.")
    return remember_secret(line)


def credentials_dir(state_path: Path) -> Path:
    """Where a state dir's local stack keeps its TLS material (beside the servers' own directories)."""
    return state_path / "stack" / "tls"


def stack_credentials(directory: str | None) -> StackCredentials | None:
    return None if directory is None else StackCredentials(Path(directory))


def kafka_security(settings: KafkaConfig) -> dict[str, Any]:
    """librdkafka properties from the kafka security keys, completed from the local stack in tls mode.

    A key the user set is always passed on (kafka.client may be what sets security.protocol); the stack's
    values fill the gaps only while the protocol is the stack's own.  Raises ConfigError when
    stack.security is tls and the stack has not made its credentials yet.
    """
    stack = stack_credentials(settings.stack_credentials)
    protocol = settings.security_protocol or (STACK_KAFKA_PROTOCOL if stack else None)
    local = stack if protocol == STACK_KAFKA_PROTOCOL else None
    properties = {
        "security.protocol": protocol,
        "sasl.mechanism": settings.sasl_mechanism or (STACK_KAFKA_MECHANISM if local else None),
        "sasl.username": settings.sasl_username or (USER if local else None),
        "sasl.password": settings.sasl_password
        or settings.password_read
        or (_stack_secret(local.kafka_password) if local else None),
        "ssl.ca.location": settings.tls_ca_file or (str(local.ca_file) if local else None),
    }
    remember_secret(properties["sasl.password"])
    return {key: value for key, value in properties.items() if value is not None}


def mongo_security(settings: MongoConfig) -> dict[str, Any]:
    """MongoClient keyword arguments from the mongodb security keys, completed from the local stack in tls mode.

    Raises ConfigError when stack.security is tls and the stack has not made its credentials yet.
    """
    stack = stack_credentials(settings.stack_credentials)
    options: dict[str, Any] = {}
    if settings.tls or stack is not None:
        options["tls"] = True
    # Passed even without mongodb.tls: the uri's own tls=true may be what asks for TLS.
    ca_file = settings.tls_ca_file or (str(stack.ca_file) if stack else None)
    if ca_file is not None:
        options["tlsCAFile"] = ca_file
    password = settings.password or settings.password_read
    if settings.username is not None:
        options["username"] = settings.username
    if password is not None:
        options["password"] = remember_secret(password)
    elif stack is not None and settings.username is None and "@" not in settings.uri:
        options["username"] = USER
        options["password"] = remember_secret(_stack_secret(stack.store_password))
        options["authSource"] = STACK_STORE_AUTH_SOURCE
    return options


def mongo_client(settings: MongoConfig, **options: Any) -> pymongo.MongoClient:
    """A client for mongodb.uri with the security settings applied; it connects lazily, so an unreachable
    store shows up at the first operation.  `options` are the caller's own (timeouts, tz_aware)."""
    # Imported here: the producer makes Kafka clients through this module and never needs pymongo.
    import pymongo
    from pymongo.errors import ConfigurationError

    try:
        return pymongo.MongoClient(settings.uri, **mongo_security(settings), **options)
    except ConfigurationError as exc:
        raise ConfigError(
            f"mongodb.uri: {exc}; expected a connection string like mongodb://host:27017 "
            "(and check mongodb.username, mongodb.tls_ca_file)."
        ) from None


def _stack_secret(read: Any) -> str:
    try:
        return read()
    except CredentialsMissing as exc:
        raise ConfigError(str(exc)) from None
