"""Reading path segments, query arguments and headers of a request."""

import json
import re
from typing import TypeVar, overload

from twisted.web.iweb import IRequest

from pgblobs.errors import InvalidArgument
from pgblobs.web.status import MalformedBody, RangeNotSatisfiable

_TRUE = {"true", "1"}
_FALSE = {"false", "0", ""}
# ASCII digits only (str.isdigit also takes '\xb2', which int() refuses), and no
# more of them than any blob's size needs: 19 fit a PostgreSQL bigint.
_BYTE_RANGE = re.compile(r"([0-9]{0,19})-([0-9]{0,19})")
_NUMBER = re.compile(r"[0-9]{1,19}")
_Kind = TypeVar("_Kind")


def segment(value: bytes) -> str:
    """A path segment as text; names.py decides whether it is a valid name."""
    return value.decode("latin-1")


def text(request: IRequest, name: str, default: str | None = None) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    return values[0].decode("latin-1")


def boolean(request: IRequest, name: str) -> bool:
    """Soledad sends True/False; true, 1, false and 0 are accepted too."""
    value = text(request, name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidArgument(f"invalid {name} {value!r}: use True or False")


@overload
def number(request: IRequest, name: str, lowest: int, highest: int) -> int | None: ...
@overload
def number(request: IRequest, name: str, lowest: int, highest: int, default: int) -> int: ...
def number(
    request: IRequest, name: str, lowest: int, highest: int, default: int | None = None
) -> int | None:
    """A whole number from ``lowest`` to ``highest``, or ``default`` when absent."""
    value = text(request, name)
    if value is None:
        return default
    return _whole_number(name, value, lowest, highest)


def header_number(request: IRequest, name: str, lowest: int, highest: int) -> int | None:
    """A header's whole number from ``lowest`` to ``highest``, or None when absent."""
    value = request.getHeader(name.encode("ascii"))
    if value is None:
        return None
    return _whole_number(name, value.decode("latin-1"), lowest, highest)


def _whole_number(name: str, value: str, lowest: int, highest: int) -> int:
    if not _NUMBER.fullmatch(value) or not lowest <= int(value) <= highest:
        raise InvalidArgument(f"invalid {name} {value[:30]!r}: use {lowest} to {highest}")
    return int(value)


def json_body(raw: bytes, kind: type[_Kind]) -> _Kind:
    """Decode a JSON body of ``kind`` (a type), or MalformedBody."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise MalformedBody("the body is not valid JSON") from None
    except RecursionError:
        raise MalformedBody("the body's JSON is nested too deeply") from None
    if not isinstance(value, kind):
        raise MalformedBody(f"the body must be a JSON {kind.__name__}")
    return value


def byte_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` an RFC 7233 Range header asks of ``size``
    bytes, or None for the whole blob.

    Forms the RFC lets a server ignore (other units, several ranges) give
    None; anything else that cannot be served is RangeNotSatisfiable.
    """
    if header is None:
        return None
    value = header.decode("latin-1").strip()
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    numbers = _BYTE_RANGE.fullmatch(spec.strip())
    if numbers is None or not any(numbers.groups()):
        raise RangeNotSatisfiable(size, f"malformed Range header {value[:60]!r}")
    first, last = numbers.groups()
    if not first:  # suffix: the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - length), size - 1
    start = int(first)
    if last and int(last) < start:
        raise RangeNotSatisfiable(
            size, f"malformed Range header {value[:60]!r}: its end comes before its start"
        )
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, size - 1 if not last else min(int(last), size - 1)
