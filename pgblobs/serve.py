"""``pgblobs serve``: the database (shared, or embedded), the site, its
endpoints, and a graceful stop.

Without a DSN, a PostgreSQL cluster is kept under the data directory
(cluster.LocalCluster), migrated on every start, and a development token
for the user ``dev`` is kept next to it so the quick start works at once.
"""

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from functools import partial
from typing import Any, TypedDict

import psycopg2
from twisted.internet import defer, endpoints, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from pgblobs import accounts, reloading, settings
from pgblobs.backend import PostgresBlobsBackend
from pgblobs.cluster import LocalCluster
from pgblobs.db import schema
from pgblobs.db.connector import Database
from pgblobs.db.sync import SyncConnection
from pgblobs.ops import capacity
from pgblobs.systemd import SYSTEMD_PREFIX, Notifier, SocketNotPassed
from pgblobs.tokens import KnownTokens, UserTokenSource, user_token_source
from pgblobs.tokens.services_file import ServicesTokensFile, either
from pgblobs.web.auth import TokenCheck
from pgblobs.web.metrics import SiteMetrics
from pgblobs.web.site import Limits, build_services_site, build_site
from pgblobs.workers import Heartbeat, Supervisor, WorkerSpec

DEV_USER = "dev"
DEV_SERVICE = "mx"
# The line a serve prints once it accepts requests (a supervisor waits for its workers' own).
READY = "pgblobs is serving"
LARGE_OBJECTS_EVERY = 60.0  # seconds between measurements of the large objects for /metrics
_log = Logger()


class _SiteOptions(TypedDict):
    """What the public and the services sites of a node share."""

    health: Callable[[], Deferred[Any]]
    limits: Limits
    access_log: bool


@dataclass(frozen=True)
class BackendOptions:
    """The keyword arguments of PostgresBlobsBackend.connect."""

    quota_bytes: int | None = settings.QUOTA_BYTES
    quota_blobs: int | None = settings.QUOTA_BLOBS
    pool_size: int = settings.POOL_SIZE
    max_waiting: int | None = None
    statement_timeout: float = settings.STATEMENT_TIMEOUT
    max_transfers_per_user: int | None = None
    max_buffered_bytes: int = settings.MAX_BUFFERED_BYTES
    replica_dsn: list[str] = field(default_factory=list)
    replica_max_lag: float = settings.REPLICA_MAX_LAG
    max_held_changes_per_user: int = settings.HELD_CHANGES_PER_USER
    max_held_changes: int = settings.HELD_CHANGES
    upload_expiry: float = settings.UPLOAD_EXPIRY
    max_uploads_per_user: int = settings.MAX_UPLOADS_PER_USER


@dataclass
class ServeOptions:
    """The options of ``pgblobs serve``. Each field, here or in ``backend``
    and ``limits``, is named after its option: ``foo_bar`` is ``--foo-bar``."""

    dsn: str | None = None
    listen: list[str] = field(default_factory=lambda: [settings.LISTEN])
    services_listen: list[str] = field(default_factory=list)
    data_dir: str = settings.DATA_DIR
    backend: BackendOptions = field(default_factory=BackendOptions)
    limits: Limits = field(default_factory=Limits)
    drain_seconds: float = settings.DRAIN_SECONDS
    token_cache_seconds: float = settings.TOKEN_CACHE_SECONDS
    user_tokens: str = settings.USER_TOKENS
    services_tokens_file: str | None = None
    workers: int = settings.WORKERS
    log_format: str = settings.LOG_FORMAT
    access_log: bool = False


def settings_of(options: Any) -> Iterator[tuple[str, Any, Any]]:
    """(name, value, declared default) of every field of ``options``, the
    fields of the nested option groups in their place."""
    for declared in fields(options):
        value = getattr(options, declared.name)
        if is_dataclass(value):
            yield from settings_of(value)
        else:
            yield declared.name, value, declared.default


def command_line(options: ServeOptions, omit: frozenset[str] = frozenset()) -> list[str]:
    """The arguments of ``pgblobs serve`` that give back ``options``, but
    for the fields named in ``omit``."""
    arguments = []
    for name, value, default in settings_of(options):
        if name in omit:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            arguments += [flag] if value else []
        elif isinstance(value, list):
            arguments += [f"{flag}={item}" for item in value]
        elif value is None:
            # None is either "not given" (the default is worked out when
            # connecting) or a limit turned off, which the options spell so.
            arguments += [] if default is None else [f"{flag}=unlimited"]
        else:
            arguments.append(f"{flag}={value}")
    return arguments


def _kept_token(path: str, create: Callable[[], str]) -> str:
    """A development token, made by ``create()`` on first start and kept at ``path``."""
    if os.path.exists(path):
        with open(path) as kept:
            return kept.read().strip()
    token = create()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as kept:
        kept.write(token + "\n")
    return token


def _base_url(address: Any) -> str:
    host = address.host if address.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{address.port}"


def _auth_header(name: str, token: str) -> str:
    """The Authorization header, as a shell command line spells it."""
    return f"Authorization: Token $(printf '{name}:{token}' | base64 -w0)"


def _quick_start(listening: Any, token: str) -> str:
    base, auth = _base_url(listening), _auth_header(DEV_USER, token)
    blob = f"{base}/blobs/{DEV_USER}"
    return f"""development token for user {DEV_USER!r}: {token}
try:
  echo hello > blob && curl -sf -X PUT -H "{auth}" --data-binary @blob {blob}/first
  curl -s -H "{auth}" {blob}/first
  curl -s -H "{auth}" {blob}/"""


def _mail_quick_start(services: Any, service_token: str, public: Any, user_token: str) -> str:
    mx, user = _auth_header(DEV_SERVICE, service_token), _auth_header(DEV_USER, user_token)
    incoming = f"{_base_url(services)}/incoming/{DEV_USER}"
    pending = f"{_base_url(public)}/blobs/{DEV_USER}/?namespace=MX&filter_flag=PENDING"
    return f"""services listener on {_base_url(services)}; \
development token for the service {DEV_SERVICE!r}: {service_token}
deliver a message as an MX would, then list it as the mail client does:
  echo 'an encrypted message' > message && \
curl -sf -X PUT -H "{mx}" --data-binary @message {incoming}/first-mail
  curl -s -H "{user}" '{pending}'"""


def _addresses(ports: list[Any]) -> str:
    return ", ".join(f"{port.getHost().host}:{port.getHost().port}" for port in ports)


def _print_quick_start(dsn: str, data_dir: str, public: Any, services: Any) -> None:
    """The development tokens (made on first start, kept in ``data_dir``) and
    lines to paste: the quick start, and a mail delivery if ``services``."""
    connection = SyncConnection.connect(dsn)
    try:
        user_token = _kept_token(
            os.path.join(data_dir, "dev-token"),
            partial(accounts.create_token, connection, DEV_USER),
        )
        print(_quick_start(public, user_token), flush=True)
        if services is not None:
            service_token = _kept_token(
                os.path.join(data_dir, "dev-service-token"),
                partial(accounts.create_service_token, connection, DEV_SERVICE),
            )
            print(_mail_quick_start(services, service_token, public, user_token), flush=True)
    finally:
        connection.close()


async def _connect(
    reactor: Any, dsn: str, options: ServeOptions, notifier: Notifier
) -> PostgresBlobsBackend:
    """Connect, waiting out a database that is not reachable yet (backing off
    up to 30 s between attempts) rather than exiting into a restart loop."""
    delay = 0.5
    while True:
        try:
            return await PostgresBlobsBackend.connect(dsn, **asdict(options.backend))
        except psycopg2.OperationalError as error:
            reason = str(error).strip().splitlines()[0]
            _log.warn(
                "database unreachable ({reason}); retrying in {delay:.1f}s",
                reason=reason,
                delay=delay,
            )
            notifier.status(f"waiting for the database: {reason}")
            await task.deferLater(reactor, delay, lambda: None)
            delay = min(delay * 2, 30.0)


async def _drain(
    reactor: Any,
    sites: list[Any],
    ports: list[Any],
    backend: PostgresBlobsBackend,
    tokens: list[UserTokenSource],
    grace: float,
) -> None:
    """Stop accepting, let requests in flight finish (at most ``grace``
    seconds), then close the database connections."""
    await defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])
    # Held feed requests are answered now (nothing changed yet), not after the grace.
    backend.release_held()

    def unfinished() -> int:
        return sum(len(site.in_flight) for site in sites)

    waited = 0.0
    while unfinished() and waited < grace:
        await task.deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
    if unfinished():
        _log.warn("stopping with {count} requests unfinished", count=unfinished())
    for source in tokens:
        source.stop()
    await backend.close()


async def run(reactor: Any, options: ServeOptions, worker: WorkerSpec | None = None) -> None:
    """Serve until the reactor stops (SIGINT/SIGTERM): in this process, or
    through ``options.workers`` worker processes. ``worker``: what a worker
    was handed by its supervisor (workers.py), whose sockets it serves."""
    # First: before a child (a worker, the embedded PostgreSQL) inherits the variables.
    notifier = Notifier.from_environment()
    notifier.status("starting")
    notifier.start_watchdog(reactor)
    reactor.addSystemEventTrigger("before", "shutdown", notifier.stopping, "draining")
    reloading.install(reactor)
    if worker is not None:
        Heartbeat(reactor, worker.heartbeat_fd).start()
    cluster = None
    dsn = options.dsn
    if not dsn:
        # Started from the main thread: it stops when this process ends, however.
        cluster = LocalCluster(options.data_dir, stop_with_starter=True)
        print(f"starting the embedded PostgreSQL in {cluster.directory}", flush=True)
        cluster.start()
        reactor.addSystemEventTrigger("after", "shutdown", cluster.stop)
        schema.upgrade(cluster.dsn)
        dsn = cluster.dsn
    if options.workers > 1:
        notifier.status(f"starting {options.workers} workers")
        ports, services_ports = await _supervise(
            reactor, replace(options, dsn=dsn, workers=1), options.workers
        )
    else:
        inherited = None if worker is None else worker.ports
        ports, services_ports = await _serve_here(reactor, options, dsn, inherited, notifier)
    serving = (
        f"{READY} on {_addresses(ports)}"
        + (f"; services on {_addresses(services_ports)}" if services_ports else "")
        + (f" ({options.workers} workers)" if options.workers > 1 else "")
    )
    print(serving, flush=True)
    notifier.ready(serving)
    if cluster is not None:
        _print_quick_start(
            dsn,
            options.data_dir,
            ports[0].getHost(),
            services_ports[0].getHost() if services_ports else None,
        )
    await defer.Deferred()  # until the reactor stops


async def _serve_here(
    reactor: Any,
    options: ServeOptions,
    dsn: str,
    inherited: dict[str, list[tuple[int, int]]] | None,
    notifier: Notifier,
) -> tuple[list[Any], list[Any]]:
    backend = await _connect(reactor, dsn, options, notifier)
    # Every node ends leases and removes expired uploads, whichever node made
    # them: one node left is enough.
    backend.start_sweeps()
    database = backend.database
    tokens = KnownTokens(
        database, fallback=backend.reading.reader, cache_seconds=options.token_cache_seconds
    )
    await tokens.start()
    users = user_token_source(reactor, options.user_tokens, tokens, options.token_cache_seconds)
    if users is not tokens:
        await users.start()
    services_check: TokenCheck = tokens.service_token_is_valid
    if options.services_tokens_file is not None:
        services_file = ServicesTokensFile(options.services_tokens_file)
        reloading.on_reload(services_file.reload)
        services_check = either(services_file, tokens.service_token_is_valid)
    shared: _SiteOptions = {
        "health": database.ping,
        "limits": options.limits,
        "access_log": options.access_log,
    }
    site = build_site(backend, users.user_token_is_valid, pool_usage=database.usage, **shared)
    sites = {"public": site}
    if options.services_listen:
        sites["services"] = build_services_site(
            backend, services_check, metrics=site.metrics, **shared
        )
    if inherited is None:
        ports = {
            "public": [await _listen(reactor, d, site) for d in options.listen],
            "services": [
                await _listen(reactor, d, sites["services"]) for d in options.services_listen
            ],
        }
    else:
        ports = {
            name: [reactor.adoptStreamPort(fd, family, sites[name]) for fd, family in group]
            for name, group in inherited.items()
        }
    # Measured once before the node says it serves, so /metrics never shows
    # the gauges' zeros as if they were figures.
    await _measure_storage(database, site.metrics)
    refresh = task.LoopingCall(_measure_storage, database, site.metrics)
    refresh.start(LARGE_OBJECTS_EVERY, now=False)
    reactor.addSystemEventTrigger("before", "shutdown", refresh.stop)
    every_port = ports["public"] + ports["services"]
    reactor.addSystemEventTrigger(
        "before",
        "shutdown",
        lambda: defer.ensureDeferred(
            _drain(
                reactor,
                list(sites.values()),
                every_port,
                backend,
                [tokens, users] if users is not tokens else [tokens],
                options.drain_seconds,
            )
        ),
    )
    return ports["public"], ports["services"]


def _measure_storage(database: Database, metrics: SiteMetrics) -> Deferred[None]:
    """Refresh the large-object gauges of /metrics (an estimate: cheap at any
    size), and those of the uploads in progress that hold large objects."""

    async def measuring() -> None:
        try:
            rows = await database.fetch("large_objects", {"exact": False})
            uploads = await database.fetch("uploads_in_progress", {})
        except Exception as error:  # the next round tries again; the gauges keep their values
            _log.warn("could not measure large objects: {error}", error=error)
            return
        metrics.large_objects(capacity.of_row(rows[0]))
        metrics.uploads(int(uploads[0].uploads), int(uploads[0].received_bytes))

    return defer.ensureDeferred(measuring())


async def _supervise(
    reactor: Any, options: ServeOptions, count: int
) -> tuple[list[Any], list[Any]]:
    """Open the sockets here, and start ``count`` workers serving ``options``
    on them: each a `pgblobs serve` told these options on its command line."""
    # This process never accepts: the sockets are only held for the workers.
    idle = Site(Resource())
    ports = {
        "public": [await _listen(reactor, d, idle) for d in options.listen],
        "services": [await _listen(reactor, d, idle) for d in options.services_listen],
    }
    for port in ports["public"] + ports["services"]:
        port.stopReading()
    # The DSN and a CouchDB URL may hold passwords: the workers read them
    # from their environment (PGBLOBS_DSN and PGBLOBS_USER_TOKENS, which
    # --dsn and --user-tokens default to), where other users cannot see them.
    # Their command line says every other option: no configuration file.
    shown = command_line(replace(options, dsn=None), omit=frozenset({"user_tokens"}))
    command = [sys.executable, "-m", "pgblobs.cli", "serve", *shown]
    environment = {k: v for k, v in os.environ.items() if k != settings.CONFIG_VARIABLE}
    environment[settings.DSN_VARIABLE] = options.dsn or ""
    environment[settings.USER_TOKENS_VARIABLE] = options.user_tokens
    supervisor = Supervisor(reactor, command, ports, count, READY, environment)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: supervisor.stop(options.drain_seconds)
    )
    reloading.on_reload(supervisor.reload)
    supervisor.start()
    await supervisor.ready
    return ports["public"], ports["services"]


async def _listen(reactor: Any, description: str, site: Site) -> Any:
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (IndexError, KeyError) as error:  # how Twisted says a socket was not passed
        if description.startswith(SYSTEMD_PREFIX):
            raise SocketNotPassed(description) from error
        raise
    port = await endpoint.listen(site)
    _log.info("listening on {address}", address=port.getHost())
    return port


def start_logging(log_format: str) -> None:
    from twisted.logger import globalLogBeginner, jsonFileLogObserver, textFileLogObserver

    if log_format == "json":
        observer = jsonFileLogObserver(sys.stdout, recordSeparator="")  # JSON lines
    else:
        observer = textFileLogObserver(sys.stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
