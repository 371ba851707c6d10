"""Named SQL: loads ``queries.sql`` once and runs its statements by name,
and says what their rows are.

Keeping every statement in one file (as procrastinate does) means the SQL can
be read, reviewed and EXPLAINed in one place; Python only ever refers to a
statement by its name.
"""

import re
from importlib import resources
from typing import Any, Protocol


class Row(Protocol):
    """A row of a named statement: its columns are read by name
    (``row.size``), never by position, so a statement may gain columns.

    psycopg2's NamedTupleCursor makes them (a third of RealDictCursor's cost
    on long listings). Which columns a row has is written in ``queries.sql``,
    not in Python, so a column reads as Any: what psycopg2 maps its SQL type to.
    """

    def __getattr__(self, column: str) -> Any: ...


# "-- name: NAME" or "-- name: NAME (read)": a read changes nothing, so it
# may be sent again when its connection was lost.
_HEADER = re.compile(r"^-- name: (\w+)( \(read\))?\n((?:--.*\n)*)", re.MULTILINE)


def _load() -> tuple[dict[str, str], frozenset[str]]:
    text = resources.files("pgblobs.db").joinpath("queries.sql").read_text()
    heads = list(_HEADER.finditer(text))
    statements: dict[str, str] = {}
    reads: set[str] = set()
    for head, following in zip(heads, [*heads[1:], None], strict=True):
        end = following.start() if following else len(text)
        statements[head.group(1)] = text[head.end() : end].strip().rstrip(";")
        if head.group(2):
            reads.add(head.group(1))
    return statements, frozenset(reads)


SQL, READS = _load()
