"""The status of every request on /blobs/{user}/{blob_id}, predicted from
pgblobs.names alone: a name it refuses is 400, a valid one 200 for alice
(whose token the client holds) and 403 for anyone else. Shared by the fast
tests (memory backend) and the hostile ones (a real node)."""

from urllib.parse import quote

from hypothesis import strategies as st

from pgblobs import names
from pgblobs.errors import InvalidFlag, InvalidName

TOKEN_USER = "alice"
# A new blob's life, in order: each step 200 when its names are valid and alice's.
BLOB_LIFE = (("PUT", b"data"), ("GET", None), ("POST", b'["PENDING"]'), ("DELETE", None))

anything = st.text(max_size=300)
# Valid names often enough that 200 and 403 are predicted as often as 400.
valid_names = st.from_regex(r"[A-Za-z0-9_-]{1,255}", fullmatch=True)
users = st.one_of(st.sampled_from([TOKEN_USER, "bob", ""]), valid_names, anything)
blob_ids = st.one_of(st.just(""), valid_names, anything)
namespaces = st.one_of(st.sampled_from(["", "default", "other"]), valid_names, anything)
flag_values = st.one_of(st.sampled_from(names.Flags.ALL), anything)
flag_lists = st.lists(st.one_of(flag_values, st.integers(), st.none(), st.booleans()), max_size=6)


def blob_path(user: str, blob_id: str, namespace: str) -> str:
    return f"/blobs/{quote(user, safe='')}/{quote(blob_id, safe='')}?namespace={quote(namespace)}"


def expected_status(method: str, user: str, blob_id: str, namespace: str) -> int:
    """The status of ``method`` on ``blob_path(user, blob_id, namespace)``,
    in BLOB_LIFE's order, with TOKEN_USER's token."""
    if user == "":
        return 404  # /blobs//...: no user, so no resource
    if blob_id == "" and method not in ("GET", "HEAD"):
        return 405  # /blobs/{user}/ only lists
    try:
        names.user_name(user)
        names.namespace_name(namespace)
        if blob_id:
            names.blob_name(blob_id)
    except InvalidName:
        return 400  # checked before the token
    return 200 if user == TOKEN_USER else 403


def expected_flags_status(flags: list[object]) -> int:
    """The status of POSTing ``flags`` (as JSON) to a blob of alice's."""
    try:
        names.flag_list(flags)
    except InvalidFlag:
        return 406
    return 200
