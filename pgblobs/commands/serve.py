"""``pgblobs serve``: its options, and the handler that turns them into
serve.ServeOptions and serves.

Each option's destination is the name of its ServeOptions field (``--foo-bar``
is ``foo_bar``, in ServeOptions, BackendOptions or Limits), and its default
is settings.py's ``FOO_BAR``; serve.command_line is the inverse, which is how
a supervisor tells its workers their options.
"""

import argparse
import os
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from typing import Any

from pgblobs import serve, settings, workers
from pgblobs.commands import config_file
from pgblobs.commands.common import (
    Subcommands,
    blob_limit,
    byte_limit,
    database_options,
    non_negative,
    non_negative_seconds,
    positive,
    positive_float,
    react,
)
from pgblobs.errors import ServicesTokensFileInvalid
from pgblobs.tokens import couchdb, services_file
from pgblobs.web.site import Limits


def _worker_count(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    return positive(text)


def _blob_size_limit(text: str) -> int:
    value = non_negative(text)
    if value > Limits.max_blob_bytes:
        raise argparse.ArgumentTypeError(
            f"at most {Limits.max_blob_bytes}: a stream download gives sizes in 8 hex digits"
        )
    return value


def _user_token_source(text: str) -> str:
    """``pgblobs``, or ``couchdb:`` and the URL of the provider's CouchDB."""
    if text == settings.USER_TOKENS:
        return text
    if text.startswith(couchdb.PREFIX):
        try:
            couchdb.CouchDBAddress.parse(text.removeprefix(couchdb.PREFIX))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{error}; expected couchdb:http[s]://...") from None
        return text
    raise argparse.ArgumentTypeError(
        "expected 'pgblobs' or 'couchdb:URL', e.g. couchdb:http://user:password@127.0.0.1:5984"
    )


# `pgblobs serve`'s sizes and times: (option, type, default, help).
_SERVE_LIMITS: list[tuple[str, Callable[[str], Any], Any, str]] = [
    ("--quota-bytes", byte_limit, settings.QUOTA_BYTES,
     "default quota per user in bytes, or 'unlimited' (default: %(default)s)"),
    ("--quota-blobs", blob_limit, settings.QUOTA_BLOBS,
     "live blobs each user may keep, or 'unlimited'; past it writes get 507 (default: "
     "%(default)s)"),
    ("--pool-size", int, settings.POOL_SIZE,
     "database connections per pool (default: %(default)s)"),
    ("--max-waiting", non_negative, None,
     "transfers that may wait for a busy content pool before 503s (default: "
     f"{settings.WAITING_PER_CONNECTION} x pool; statements may wait 10 times as many)"),
    ("--statement-timeout", float, settings.STATEMENT_TIMEOUT,
     "seconds any one SQL statement may run; one the database has not answered "
     f"{settings.STATEMENT_DEADLINE_MARGIN:g} s later (a silent link) fails with 503 and its "
     "connection is replaced; 0: no limit (default: %(default)s)"),
    ("--token-cache-seconds", non_negative_seconds, settings.TOKEN_CACHE_SECONDS,
     "seconds a node may remember a valid token after the database (or, with --user-tokens "
     "couchdb:URL, the provider's CouchDB) last confirmed it (revocations are heard at once "
     "through LISTEN or CouchDB's _changes feed, and a silent one is noticed within "
     "seconds; this bounds the rest, and is how long remembered tokens keep working while "
     "CouchDB is down); 0: ask every time (default: %(default)s)"),
    ("--max-transfers-per-user", positive, None,
     "large reads and writes one user may run at once; more wait their turn, so one "
     "user's stalled transfers never hold every content connection (default: half of "
     "--pool-size)"),
    ("--max-buffered-bytes", non_negative, settings.MAX_BUFFERED_BYTES,
     "bytes of small upload bodies gathered in memory at once; past it, small uploads "
     "stream like large ones (default: %(default)s)"),
    ("--max-blob-bytes", _blob_size_limit, Limits.max_blob_bytes,
     "largest blob accepted (default and most: %(default)s, what a stream download's size "
     "field can carry)"),
    ("--max-json-bytes", non_negative, settings.MAX_JSON_BYTES,
     "largest flag list or stream listing (default: %(default)s)"),
    ("--max-stream-ids", positive, settings.MAX_STREAM_IDS,
     "blobs one stream download or upload may carry; more is a 413 (default: %(default)s)"),
    ("--idle-timeout", float, settings.IDLE_TIMEOUT,
     "seconds a connection may keep the server waiting: silent between requests, or not "
     "sending a body or not reading an answer (default: %(default)s)"),
    ("--header-timeout", float, settings.HEADER_TIMEOUT,
     "seconds from accepting a connection (or ending a response) to the last header of "
     "its request (default: %(default)s)"),
    ("--min-upload-rate", non_negative, settings.MIN_UPLOAD_RATE,
     "bytes per second a request body must keep up, over each --upload-rate-window, while "
     "the server reads it; a slower one is cut with 408, so clients that trickle cannot "
     "hold database connections; 0: no floor (default: %(default)s)"),
    ("--upload-rate-window", positive_float, settings.UPLOAD_RATE_WINDOW,
     "seconds over which --min-upload-rate is measured; time the server itself keeps a "
     "body waiting does not count (default: %(default)s)"),
    ("--max-connections", positive, settings.max_connections(),
     "client connections each process (each worker) keeps open on the public listeners; "
     "past it a new connection is answered 503 with Retry-After and closed, and those "
     "connected are served as before (default: the descriptor limit, ulimit -n, less "
     f"{settings.DESCRIPTOR_RESERVE} for database connections and files: %(default)s here)"),
    ("--max-services-connections", positive, settings.MAX_SERVICES_CONNECTIONS,
     "the same for the services listeners, counted apart so that a flood of the public "
     "listener never refuses an MX (default: %(default)s)"),
    ("--workers", _worker_count, settings.WORKERS,
     "processes serving the listening sockets, each with its own pool (one Python "
     "process uses one core); 'auto': one per core (default: %(default)s)"),
    ("--replica-max-lag", float, settings.REPLICA_MAX_LAG,
     "seconds a replica may lag and still answer reads, measured by a heartbeat the node "
     "writes on the primary; a change on the primary (a delete, a revoked token) is seen by "
     "every read that starts this long after it, even with the primary down "
     "(default: %(default)s)"),
    ("--max-held-changes-per-user", positive, settings.HELD_CHANGES_PER_USER,
     "GET /changes requests with wait= one user may have held at once in each process "
     "(a device needs one or two); past it, 429 with Retry-After (default: %(default)s)"),
    ("--max-held-changes", positive, settings.HELD_CHANGES,
     "GET /changes requests held at once in each process, all users together (each also "
     "holds a connection, which --max-connections bounds as well); past it, 429 with "
     "Retry-After. A held request holds no database connection (default: %(default)s)"),
    ("--upload-expiry", positive_float, settings.UPLOAD_EXPIRY,
     "seconds a resumable upload (/uploads) lives after its creation or its last PATCH "
     "step; then any node removes it and its bytes (default: %(default)s, a day)"),
    ("--max-uploads-per-user", positive, settings.MAX_UPLOADS_PER_USER,
     "resumable uploads one user may have in progress, on all nodes together; past it, "
     "creating one is a 429 (default: %(default)s)"),
    ("--drain-seconds", float, settings.DRAIN_SECONDS,
     "on SIGTERM, how long requests in flight may take (default: %(default)s)"),
]  # fmt: skip

# The ServeOptions fields that group others, rather than name an option.
_GROUPS = {"backend": serve.BackendOptions, "limits": Limits}


def serve_options(args: argparse.Namespace) -> serve.ServeOptions:
    """The ServeOptions ``args`` give, field by field of the same name."""
    given = vars(args)

    def of(group: type) -> dict[str, Any]:
        return {f.name: given[f.name] for f in fields(group) if f.name not in _GROUPS}

    chosen = of(serve.ServeOptions)
    # An appended option starts from nothing, so its default cannot be in the parser.
    chosen["listen"] = chosen["listen"] or [settings.LISTEN]
    groups = {name: group(**of(group)) for name, group in _GROUPS.items()}
    return serve.ServeOptions(**chosen, **groups)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    # `serve` is the first argument: the rest are its own (cli.main).
    args = config_file.with_file(parser, args, args.arguments[1:])
    if args.print_config:
        print(config_file.render(serve.settings_of(serve_options(args))), end="")
        return
    if args.worker is not None:
        workers.exit_with_supervisor(args.worker.supervisor)
    options = serve_options(args)
    if options.services_tokens_file is not None:
        try:  # a bad file stops the start here, before anything listens
            services_file.read(options.services_tokens_file)
        except ServicesTokensFileInvalid as error:
            parser.exit(2, f"pgblobs serve: {error}\n")
    serve.start_logging(options.log_format)
    from twisted.internet import reactor

    react(lambda: serve.run(reactor, options, worker=args.worker))


def configure_parser(commands: Subcommands) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the blobs HTTP API",
        description="Serve the blobs HTTP API. SIGTERM or SIGINT: stop accepting, let requests "
        "in flight finish, exit. SIGHUP: re-read what can be re-read (passed on to workers). "
        "Under systemd (Type=notify, $NOTIFY_SOCKET) it says READY=1 once serving, its "
        "status, STOPPING=1, and pings the watchdog every $WATCHDOG_USEC/2.",
    )
    config_file.add_options(parser)
    database_options(parser)
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="a Twisted endpoint, e.g. tcp:9000:interface=127.0.0.1, "
        "ssl:443:privateKey=key.pem:certKey=cert.pem, or systemd:domain=INET:index=0 for "
        "the socket of a socket-activated service (repeatable)",
    )
    parser.add_argument(
        "--services-listen",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="a Twisted endpoint for the provider's own services, e.g. "
        "tcp:9001:interface=127.0.0.1: PUT /incoming/{user}/{id} delivers "
        "mail, with a service token (repeatable; none by default)",
    )
    parser.add_argument(
        "--replica-dsn",
        action="append",
        default=[],
        metavar="DSN",
        help="a streaming replica that may answer reads (GET, HEAD, listings, counts, flags, "
        "stream downloads) while it is close behind; writes always go to the primary "
        "(repeatable)",
    )
    parser.add_argument(
        "--user-tokens",
        type=_user_token_source,
        default=settings.user_tokens(),
        metavar="SOURCE",
        help="where users' tokens are checked: 'pgblobs' (its own table, `pgblobs token`), or "
        "'couchdb:URL' (e.g. couchdb:http://user:password@127.0.0.1:5984), a LEAP provider's "
        "CouchDB as Soledad's server reads it (the document sha512(token) of tokens_N, "
        "N = unix time / 2592000), where pgblobs' own table is not consulted; a valid answer is "
        "remembered for --token-cache-seconds, and forgotten within a second of a change "
        "to its document (the _changes feed); while CouchDB cannot be reached, tokens not "
        "remembered get 503 (default: "
        f"${settings.USER_TOKENS_VARIABLE}, else {settings.USER_TOKENS})",
    )
    parser.add_argument(
        "--services-tokens-file",
        metavar="PATH",
        help="Soledad's services tokens file (e.g. /etc/soledad/services.tokens: a "
        "service:token a line, # comments), re-read on SIGHUP by every worker; a service "
        "token is valid if it is in this file or made by `pgblobs service-token`",
    )
    for flag, kind, default, help_text in _SERVE_LIMITS:
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    parser.add_argument("--log-format", choices=("text", "json"), default=settings.LOG_FORMAT)
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per request (off by default: /metrics counts requests, and the "
        "line costs about a sixth of a small GET's CPU)",
    )
    # Only a supervisor passes it, to its workers (workers.py).
    parser.add_argument(
        workers.WORKER_OPTION, type=workers.WorkerSpec.from_argument, help=argparse.SUPPRESS
    )
    parser.set_defaults(run=partial(_serve, parser))
