"""Named SQL: loads ``queries.sql`` once and runs its statements by name.

Keeping every statement in one file (as procrastinate does) means the SQL can
be read, reviewed and EXPLAINed in one place; Python only ever refers to a
statement by its name.
"""

import re
from importlib import resources

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
