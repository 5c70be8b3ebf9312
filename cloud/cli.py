"""`soundwarden-cloud`: run the service and manage its users and devices.

Settings come from SOUNDWARDEN_* environment variables (see cloud/core/config.py), the same for
every subcommand, so `create-user` writes to the database `serve` reads.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from cloud import accounts
from cloud.core.config import Settings
from cloud.core.db import make_engine, make_sessionmaker, migrate
from cloud.tables import Device
from models.cliutil import command_parser, run_command


@contextmanager
def _database() -> Iterator[Db]:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        with make_sessionmaker(engine)() as db:
            yield db
            db.commit()
    finally:
        engine.dispose()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cloud.asgi import LOG_FORMAT_ENV
    from cloud.core.logging import configure_logging
    from cloud.main import create_app

    configure_logging(args.log_format)
    settings = Settings()
    # With SOUNDWARDEN_MQTT_URL the workers elect one of them to run the bridge, but the
    # embedded demo broker lives inside the process: each worker would start one, on one port.
    if args.workers > 1 and settings.embedded_broker_port is not None:
        print(
            "error: --workers would run the MQTT bridge once per worker, each with its own "
            "embedded demo broker on the one SOUNDWARDEN_EMBEDDED_BROKER_PORT: serve the demo "
            "with one worker, or set SOUNDWARDEN_MQTT_URL to the fleet's broker (Mosquitto), "
            "for which the workers elect one bridge",
            file=sys.stderr,
        )
        return 1
    # Built here even for workers: it migrates and seeds once, before they could race to.
    app = create_app(settings)
    if args.workers > 1:
        app.state.engine.dispose()
        os.environ[LOG_FORMAT_ENV] = args.log_format
    uvicorn.run(
        app if args.workers == 1 else "cloud.asgi:create_worker_app",
        factory=args.workers > 1,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level="info",
        log_config=None,  # uvicorn's records go through configure_logging's handler too
        timeout_graceful_shutdown=args.grace_s,
    )
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise accounts.AccountError("the passwords differ")
    return first


def _create_user(args: argparse.Namespace) -> int:
    password = _read_password(args)
    with _database() as db:
        accounts.create_user(db, args.username, password, args.role)
    print(f"created {args.role} {args.username!r}")
    return 0


def _add_device(args: argparse.Namespace) -> int:
    with _database() as db:
        token = accounts.add_device(db, args.device)
        if args.group is not None:
            device = db.get(Device, args.device)
            assert device is not None  # just added
            device.group = accounts.check_name("group", args.group)
    print(f"enrolled {args.device!r}; its token (shown only now, put it in the device's config):")
    print(token)
    return 0


def _rotate_token(args: argparse.Namespace) -> int:
    with _database() as db:
        token = accounts.rotate_device_token(db, args.device)
    print(f"new token for {args.device!r} (the old one no longer works):")
    print(token)
    return 0


def _revoke_device(args: argparse.Namespace) -> int:
    with _database() as db:
        accounts.revoke_device(db, args.device)
    print(f"revoked {args.device!r}: its token no longer works")
    return 0


def _devices(args: argparse.Namespace) -> int:
    with _database() as db:
        for device in db.scalars(select(Device).order_by(Device.id)):
            state = "revoked" if device.revoked_at else "active"
            enrolled = f"enrolled {device.created_at:%Y-%m-%d %H:%M} UTC"
            print(f"{device.id}\t{state}\t{device.group or '-'}\t{enrolled}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.db_url)
    print("database schema is current")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from cloud.jobs.celery_app import app

    if Settings().jobs != "celery":
        print(
            "warning: SOUNDWARDEN_JOBS is not 'celery': a service with these settings runs its "
            "jobs itself and sends none to this worker",
            file=sys.stderr,
        )
    app.worker_main(
        ["worker", f"--concurrency={args.concurrency}", f"--pool={args.pool}", "--loglevel=INFO"]
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("soundwarden-cloud", __doc__)
    p = sub.add_parser("serve", help="run the HTTP API and console")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    p.add_argument(
        "--grace-s",
        type=int,
        default=10,
        help="on SIGTERM, wait this long for requests in flight (default 10); the MQTT "
        "bridge then stores what it has received and disconnects",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line (time, level, logger, message, extras)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes answering requests (default 1); one process is bound to about one "
        "core, so more uploads per second need more. With SOUNDWARDEN_MQTT_URL one of them, "
        "elected, runs the MQTT bridge (not with the embedded demo broker)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("create-user", help="add a console user")
    p.add_argument("username")
    p.add_argument("--role", choices=["admin", "labeller"], default="labeller")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of a prompt",
    )
    p.set_defaults(func=_create_user)

    p = sub.add_parser("add-device", help="enrol a device and print its token once")
    p.add_argument("device", help="the device id it publishes as")
    p.add_argument("--group", help="put it in this group (rollouts can target a group)")
    p.set_defaults(func=_add_device)

    p = sub.add_parser("rotate-token", help="give a device a new token (the old one stops)")
    p.add_argument("device")
    p.set_defaults(func=_rotate_token)

    p = sub.add_parser("revoke-device", help="make a device's token stop working")
    p.add_argument("device")
    p.set_defaults(func=_revoke_device)

    p = sub.add_parser("devices", help="list enrolled devices: id, state, group, enrolment")
    p.set_defaults(func=_devices)

    p = sub.add_parser("migrate", help="bring the database schema up to date")
    p.set_defaults(func=_migrate)

    p = sub.add_parser(
        "worker",
        help="run background jobs from Redis (SOUNDWARDEN_JOBS=celery); it needs the service's "
        "database and storage settings",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="jobs run at once (default 1: each job is CPU-heavy on its own)",
    )
    p.add_argument(
        "--pool",
        choices=["prefork", "solo", "threads"],
        default="prefork",
        help="Celery execution pool (default prefork: one process per job)",
    )
    p.set_defaults(func=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, (accounts.AccountError,))


if __name__ == "__main__":
    sys.exit(main())
