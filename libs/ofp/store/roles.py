"""Least-privilege database roles: who may change the schema, write state, or read.

Three roles (docs/operations.md, "Database roles"):

- `<prefix>_migrator` owns the schema: `ofp migrate` (the migration Job) runs as it;
- `<prefix>_projector` reads and writes the feature state, checkpoints, leases and
  the policy tables (DML only: no CREATE, ALTER or DROP, and no write to
  schema_migrations);
- `<prefix>_server` reads; it may only add rows to the snapshot log.

Partition upkeep is DDL: the workloads ask for it through the migrations'
SECURITY DEFINER functions, each callable only by the role `DEFINER_FUNCTIONS`
names (EXECUTE revoked from PUBLIC).

`setup_sql` is what a database administrator runs once (`ofp migrate
--print-grants`): it creates the roles (NOLOGIN: the administrator gives each a
login and a password, or maps cloud IAM users onto it), takes CREATE on the
schema from PUBLIC, gives it to the migrator, and sets the migrator's default
privileges so every table a later migration creates is readable by both
workloads and writable by the projector. `grant_sql` holds the table-level
grants; being the owner's to give, `ofp migrate` re-applies them after every
migration, which is how a table-specific grant (INSERT on snapshot_log, added
by migration 0010) reaches a database whose roles predate that table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ofp.store.db import Conn

DEFAULT_PREFIX = "ofp"
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class Roles:
    migrator: str
    projector: str
    server: str

    @classmethod
    def with_prefix(cls, prefix: str = DEFAULT_PREFIX) -> Roles:
        if not _PREFIX.match(prefix):
            raise ValueError(
                f"role prefix {prefix!r}: lower-case letters, digits and _ only (at most 41)"
            )
        return cls(f"{prefix}_migrator", f"{prefix}_projector", f"{prefix}_server")

    def all(self) -> tuple[str, str, str]:
        return (self.migrator, self.projector, self.server)


# The DDL a workload may still ask for goes through SECURITY DEFINER functions of the
# migrations (owned by the migrator, each doing one bounded thing): who may call each.
# EXECUTE on every definer function is revoked from PUBLIC, so one not listed here is
# callable by no workload role.
DEFINER_FUNCTIONS: dict[str, str] = {
    "ofp_create_time_partitions": "projector",  # 0009: add a week ahead
    "ofp_drop_time_partitions": "projector",  # 0009: retention drops whole weeks
    "snapshot_log_maintain": "server",  # 0010: the snapshot log's daily partitions
}


def _definer_grants(roles: Roles) -> str:
    cases = "\n".join(
        f"    IF f.proname = '{name}' THEN EXECUTE format("
        f"'GRANT EXECUTE ON FUNCTION %s TO {getattr(roles, who)}', f.sig); END IF;"
        for name, who in DEFINER_FUNCTIONS.items()
    )
    return (
        "DO $$ DECLARE f record; BEGIN\n"
        "  FOR f IN SELECT p.oid::regprocedure AS sig, p.proname FROM pg_proc p\n"
        "      WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef LOOP\n"
        "    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f.sig);\n"
        f"{cases}\n"
        "  END LOOP;\n"
        "END $$;"
    )


def _if_table(table: str, statement: str) -> str:
    return (
        f"DO $$ BEGIN IF to_regclass('{table}') IS NOT NULL THEN"
        f" EXECUTE '{statement}'; END IF; END $$;"
    )


def grant_sql(roles: Roles) -> str:
    """Table-level grants on what exists now; idempotent; run by the tables' owner."""
    p, s = roles.projector, roles.server
    return "\n".join([
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {s};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {p};",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {p};",
        # The schema's history is the migrator's alone.
        _if_table("schema_migrations",
                  f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM {p}"),
        # A backfill restarts its seen-set with TRUNCATE (ofp.store.rollout).
        _if_table("backfill_seen", f"GRANT TRUNCATE ON backfill_seen TO {p}"),
        # The server's one write: the snapshot log (migration 0010).
        _if_table("snapshot_log", f"GRANT INSERT ON snapshot_log TO {s}"),
        # ... and its partitions, made ahead and dropped after retention, through
        # this function only (SECURITY DEFINER, migration 0010).
        "DO $$ BEGIN IF to_regprocedure('snapshot_log_maintain(date,integer,integer)')"
        " IS NOT NULL THEN EXECUTE 'GRANT EXECUTE ON FUNCTION"
        f" snapshot_log_maintain(date, integer, integer) TO {s}'; END IF; END $$;",
        # Partition upkeep: each definer function to its workload only.
        _definer_grants(roles),
    ])


def setup_sql(roles: Roles, database: str) -> str:
    """The one-time set-up a database administrator runs (superuser or CREATEROLE + owner)."""
    m, p, s = roles.all()
    create = "\n".join(
        f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN"
        f" CREATE ROLE {name} NOLOGIN; END IF;"
        for name in roles.all()
    )
    db = '"' + database.replace('"', '""') + '"'
    defaults = f"ALTER DEFAULT PRIVILEGES FOR ROLE {m} IN SCHEMA public"
    return f"""\
-- OFP database roles for database {db} (docs/operations.md, "Database roles").
-- Run once as a superuser (or a role with CREATEROLE that owns the database), then
-- give each role a login, e.g.:
--   ALTER ROLE {m} LOGIN PASSWORD '...';   -- the migration Job (ofp migrate)
--   ALTER ROLE {p} LOGIN PASSWORD '...';   -- ofp-projector
--   ALTER ROLE {s} LOGIN PASSWORD '...';   -- ofp-server
-- Tables created by another role before this (an older deployment) keep their
-- owner: hand them over with REASSIGN OWNED BY <old owner> TO {m};
DO $$ BEGIN
{create}
END $$;
GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {m}, {p}, {s};
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO {m};
GRANT USAGE ON SCHEMA public TO {p}, {s};
{defaults} GRANT SELECT ON TABLES TO {s};
{defaults} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {p};
{defaults} GRANT USAGE, SELECT ON SEQUENCES TO {p};
-- Tables that exist already; `ofp migrate` re-applies these after every migration.
{grant_sql(roles)}
"""


async def existing_roles(conn: Conn, roles: Roles) -> set[str]:
    rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])",
                            list(roles.all()))
    return {str(r["rolname"]) for r in rows}


async def apply_grants(conn: Conn, roles: Roles) -> bool:
    """Re-apply `grant_sql` when the workload roles exist (False, nothing done, otherwise:
    a development database where one role does everything)."""
    found = await existing_roles(conn, roles)
    if not {roles.projector, roles.server} <= found:
        return False
    await conn.execute(grant_sql(roles))
    return True
