"""Database engine and sessions.

SQLite runs in WAL mode with a busy timeout, and write transactions start with
``BEGIN IMMEDIATE``: a deferred transaction that later writes must upgrade its lock, and
an upgrade that meets another writer fails at once with "database is locked" instead of
waiting. Read-only sessions (``readonly=True``) begin deferred, so readers never queue
behind writers under WAL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


@lru_cache
def engine_for(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):  # type: ignore[no-untyped-def]
        write = connection.get_execution_options().get("sqlite_write", True)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@lru_cache
def session_factory(url: str, readonly: bool = False) -> sessionmaker[Session]:
    engine = engine_for(url)
    if readonly:
        engine = engine.execution_options(sqlite_write=False)
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str, readonly: bool = False) -> Iterator[Session]:
    session = session_factory(url, readonly)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
