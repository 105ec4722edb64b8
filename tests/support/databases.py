"""Which database the tests run on. Some behaviour is PostgreSQL's own (psycopg's pool,
`statement_timeout`, a materialized view, a second connection reading a committed row): its
tests run on the PostgreSQL profile (DATABASE_URL=postgres://...) and are skipped on SQLite."""

import pytest
from django.db import connection

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="PostgreSQL only: run with DATABASE_URL=postgres://... (the PostgreSQL profile)",
)

# A browser client's own behaviour (its states, layout, reconnects) does not depend on the
# server's database: those tests prove it once, on the embedded default, and the PostgreSQL
# profile keeps the server's own tests (docs: README, "Tests").
embedded_only = pytest.mark.skipif(
    connection.vendor != "sqlite",
    reason="embedded default only: a browser client's behaviour, proved once on that profile",
)
