"""Reading files of a Soledad filesystem tree without trusting it.

Only regular files are read: a symbolic link is never followed (O_NOFOLLOW),
FIFOs, devices and sockets are never read (O_NONBLOCK, then fstat refuses
them), and a file is read up to its size when opened and no further, so one
that changed meanwhile is a torn copy, not a blob. import-fs reads the
files it imports this way, export-fs the files it compares with a row.
"""

import datetime
import errno
import os
import stat
from collections.abc import Iterator

from pgblobs.transfer import CHUNK

LINK = "a symbolic link, not followed"
_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


def unfit(mode: int) -> str | None:
    """Why a file of this mode (from lstat or fstat) is not read; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return LINK
    kind = next((kind for test, kind in _NOT_REGULAR if test(mode)), "a special file")
    return f"{kind}, not a regular file"


class UnfitFile(ValueError):
    """A file that is not read: not a regular file, or one that changed while read."""


def file_date(status: os.stat_result) -> datetime.datetime:
    """A file's mtime, which the layout makes its blob's date."""
    return datetime.datetime.fromtimestamp(status.st_mtime, datetime.UTC)


class RegularFile:
    """A regular file opened without following a link (O_NOFOLLOW) and without
    blocking on a FIFO or device (O_NONBLOCK; fstat then refuses them), read
    up to its size at open and no further."""

    def __init__(self, path: str | os.PathLike[str], dir_fd: int | None = None) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnfitFile(LINK) from None
            raise
        self.status = os.fstat(self._fd)
        reason = unfit(self.status.st_mode)
        if reason is not None:
            os.close(self._fd)
            raise UnfitFile(reason)

    def __enter__(self) -> "RegularFile":
        return self

    def __exit__(self, *exception: object) -> None:
        os.close(self._fd)

    @property
    def size(self) -> int:
        return self.status.st_size

    @property
    def date(self) -> datetime.datetime:
        return file_date(self.status)

    def chunks(self) -> Iterator[bytes]:
        """The content, ``size`` bytes at most; UnfitFile at the end if the file
        changed meanwhile (a torn copy must not pass for the blob)."""
        left = self.size
        while left and (chunk := os.read(self._fd, min(CHUNK, left))):
            left -= len(chunk)
            yield chunk
        after = os.fstat(self._fd)
        if left or (after.st_size, after.st_mtime_ns) != (self.size, self.status.st_mtime_ns):
            raise UnfitFile(
                f"changed while read ({self.size} bytes when opened, {after.st_size} after)"
            )
