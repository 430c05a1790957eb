"""What schema a build expects, and refusing to run against another.

A workload started against a database whose applied migrations differ from
the ones it ships would misread or miswrite state, so it stops with one line
(exit code `EXIT_SCHEMA`) instead: behind means `ofp migrate` has not run yet,
ahead means a newer build migrated the database and this one is too old.
"""

from __future__ import annotations

from ofp.store.db import Conn, migration_files

# The exit code of ofp-projector and ofp-server when the schema does not match.
EXIT_SCHEMA = 3


class SchemaMismatchError(RuntimeError):
    """The database's applied migrations are not the ones this build ships."""


def expected_versions() -> frozenset[int]:
    return frozenset(version for version, _, _ in migration_files())


async def applied_versions(conn: Conn) -> frozenset[int] | None:
    """The versions recorded in schema_migrations; None when the table does not exist."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return None
    rows = await conn.fetch("SELECT version FROM schema_migrations")
    return frozenset(int(r["version"]) for r in rows)


def mismatch(applied: frozenset[int] | None, expected: frozenset[int]) -> str | None:
    """One line saying how `applied` differs from `expected`, or None when they agree."""
    want = max(expected)
    if not applied:
        return (f"the database has no OFP schema; this build expects version {want}:"
                " run `ofp migrate`")
    ahead = sorted(applied - expected)
    if ahead:
        return (
            f"the database schema is at version {max(applied)}, ahead of this build"
            f" (expects {want}; unknown migrations {_names(ahead)}): deploy the build"
            " that migrated it, or a newer one"
        )
    behind = sorted(expected - applied)
    if behind:
        return (
            f"the database schema is at version {max(applied)}, behind this build"
            f" (expects {want}; pending migrations {_names(behind)}): run `ofp migrate`"
        )
    return None


def _names(versions: list[int]) -> str:
    return ", ".join(f"{v:04d}" for v in versions)


async def check_schema(conn: Conn) -> int:
    """The schema version when it is exactly this build's, else SchemaMismatchError."""
    expected = expected_versions()
    problem = mismatch(await applied_versions(conn), expected)
    if problem is not None:
        raise SchemaMismatchError(problem)
    return max(expected)
