"""``modelpress serve``, ``worker``, ``create-key`` and ``migrate``."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from pydantic import ValidationError

from service.settings import Settings

EXIT_USAGE = 3


def _settings() -> Settings | None:
    try:
        return Settings()
    except ValidationError as exc:
        print(f"modelpress: settings refused: {exc.errors()[0]['msg']}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return EXIT_USAGE
    from service.logs import configure_logging
    from service.migrate import upgrade

    configure_logging()
    upgrade(settings.db_url)
    if args.command == "migrate":
        print(f"database at {settings.db_url.split('@')[-1]} is up to date")
        return 0
    if args.command == "create-key":
        from service.auth import create_key
        from service.db import session_scope

        with session_scope(settings.db_url) as session:
            tenant, token = create_key(session, args.tenant)
            print(f"tenant {tenant.name} ({tenant.id}): new API key (shown once, stored hashed):")
        print(token)
        return 0
    if args.command == "worker":
        return _worker(settings)
    return _serve(settings, args)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.executors.local import WorkerPool
    from service.reaper import Reaper

    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    count = settings.workers if args.workers is None else args.workers
    pool = WorkerPool(settings, count) if settings.executor == "local" and count > 0 else None
    if pool is not None:
        pool.start()
    reaper = Reaper(settings).start()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        uvicorn.run(
            create_app(settings), host=args.host, port=args.port, log_config=None, timeout_graceful_shutdown=5
        )
    except KeyboardInterrupt:
        pass
    finally:
        reaper.stop()
        if pool is not None:
            pool.stop()
    return 0


def _worker(settings: Settings) -> int:
    if settings.executor != "celery":
        print(
            "modelpress: worker runs Celery: set MODELPRESS_EXECUTOR=celery, MODELPRESS_BROKER_URL and "
            "MODELPRESS_DATABASE_URL (serve runs local workers itself)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from service.executors.celery import app_for
    from service.reaper import Reaper

    Reaper(settings).start()
    app_for(settings).worker_main(
        [
            "worker",
            "--loglevel=INFO",
            "--pool=solo",  # the job runs in this process, where SIGTERM can stop it (ADR 6)
            # a name of its own, so that several workers on one host can share a RabbitMQ vhost
            f"--hostname=modelpress-{os.getpid()}@%h",
            "-Q",
            "modelpress",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
