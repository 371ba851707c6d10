"""pgblobs/db/schema.sql is the schema the migrations build: a database made by
every migration, revision by revision, and one made from the file have the
same catalog (``pg_dump --schema-only``, normalised) and the same rows."""

import difflib
import re
import subprocess

import pytest
from alembic import command

from pgblobs.cluster import find_program
from pgblobs.db import schema
from tests.helpers import sql

# pg_dump's boilerplate, which says nothing about the schema: session settings,
# its \restrict guard (a random key per run), and owners (whoever ran the test).
_NOISE = re.compile(r"^(SET |SELECT pg_catalog\.set_config|\\(un)?restrict |ALTER .* OWNER TO )")
# pg_dump opens each object with "--\n-- Name: ...; Type: ...; Schema: ...; Owner: ...\n--"
# ("-- Data for Name: ..." for a table's rows); what comes before the first is its header.
_OBJECT = re.compile(r"^--\n-- ((?:Data for )?Name: .*?)(?:; Owner: .*)?\n--$", re.MULTILINE)


def dump(dsn, *options):
    done = subprocess.run(
        [find_program("pg_dump"), "--schema=pgblobs", *options, dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return normalised(done.stdout)


def normalised(text):
    """The dump's objects, sorted by their names, each line trimmed: order,
    indentation, comments and owners are not the schema."""
    parts = _OBJECT.split(text)
    objects = []
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line.strip() for line in body.splitlines()]
        kept = [line for line in lines if line and not line.startswith("--")]
        objects.append("\n".join([f"-- {name}", *(s for s in kept if not _NOISE.match(s))]))
    return "\n".join(sorted(objects)) + "\n"


# The one order pg_dump does not show that matters: with no statistics yet, the planner
# breaks ties between a table's indexes by their age (tests/test_schema.py).
INDEX_AGES = """
    SELECT indrelid::regclass::text AS table_name, indexrelid::regclass::text AS index_name
    FROM pg_index WHERE indrelid::regclass::text LIKE 'pgblobs.%%'
    ORDER BY 1, indexrelid
"""


def catalog(dsn, options):
    text = dump(dsn, *options)
    if options == ("--schema-only",):
        text += "".join(f"-- index of {table}: {index}\n" for table, index in sql(dsn, INDEX_AGES))
    return text


def difference(migrated, loaded):
    return "".join(
        difflib.unified_diff(
            migrated.splitlines(keepends=True),
            loaded.splitlines(keepends=True),
            "alembic upgrade head",
            "pgblobs/db/schema.sql",
        )
    )


@pytest.fixture
def second_dsn(scratch_dsn):
    """Another empty database beside ``scratch_dsn``."""
    sql(scratch_dsn, "CREATE DATABASE from_schema_file")
    yield scratch_dsn.rsplit("dbname=", 1)[0] + "dbname=from_schema_file"
    sql(scratch_dsn, "DROP DATABASE from_schema_file WITH (FORCE)")


def test_the_schema_file_is_what_the_migrations_build(scratch_dsn, second_dsn):
    config = schema.alembic_config(scratch_dsn)
    for revision in schema.revisions():
        command.upgrade(config, revision)
    assert schema.upgrade(second_dsn) == schema.head_revision()
    for options in [("--schema-only",), ("--data-only",)]:
        migrated, loaded = catalog(scratch_dsn, options), catalog(second_dsn, options)
        if migrated != loaded:
            pytest.fail(
                f"pg_dump {options[0]}: the migrations and pgblobs/db/schema.sql differ; a "
                f"new revision changes both:\n{difference(migrated, loaded)}"
            )


def test_an_empty_database_is_built_from_the_file(scratch_dsn):
    """Not by the migrations: the function bodies are the file's own text."""
    schema.upgrade(scratch_dsn)
    body = sql(scratch_dsn, "SELECT prosrc FROM pg_proc WHERE proname = 'user_lock_key'")[0][0]
    assert body in schema.schema_file()
    assert sql(scratch_dsn, "SELECT version_num FROM pgblobs.alembic_version") == [
        (schema.head_revision(),)
    ]


def test_the_lock_key_and_the_room_are_written_once():
    text = schema.schema_file()
    assert text.count("'pgblobs.user:'") == 1
    assert text.count("coalesce(sum(live_bytes), 0)") == 1
