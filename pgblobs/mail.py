"""Mail an MX delivers, stored as Soledad's server stores it.

A delivered message (already PGP-encrypted by the MX) becomes, in the user's
``MX`` namespace, the blob ``urlsafe_base64(preamble) + b" " + message``,
flagged ``PENDING`` until the user's mail client has processed it. The
preamble is Soledad's binary blob preamble: Python ``struct`` format
``2sbbQ16s255p255pQ`` with native alignment (552 bytes): magic, encryption
scheme, method, time, IV, document id, revision and content size.
"""

import base64
import struct
import time
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from pgblobs.errors import InvalidArgument
from pgblobs.interfaces import IStampedBody

NAMESPACE = "MX"
MAGIC = b"\x13\x37"
SCHEME_EXTERNAL = 2  # encrypted outside Soledad
METHOD_PGP = 3
_PACKED = struct.Struct("2sbbQ16s255p255pQ")
ENCODED_PREAMBLE_BYTES = len(base64.urlsafe_b64encode(bytes(_PACKED.size)))  # 736


@dataclass(frozen=True)
class Preamble:
    doc_id: str
    rev: str
    content_size: int
    timestamp: int
    scheme: int = SCHEME_EXTERNAL
    method: int = METHOD_PGP
    iv: bytes = b""
    magic: bytes = MAGIC

    def encode(self) -> bytes:
        """The packed preamble (552 bytes)."""
        return _PACKED.pack(
            self.magic,
            self.scheme,
            self.method,
            self.timestamp,
            self.iv,
            self.doc_id.encode("utf-8"),
            self.rev.encode("utf-8"),
            self.content_size,
        )

    @classmethod
    def decode(cls, packed: bytes) -> "Preamble":
        if len(packed) != _PACKED.size:
            raise InvalidArgument(f"a preamble has {_PACKED.size} bytes, not {len(packed)}")
        magic, scheme, method, timestamp, iv, doc_id, rev, size = _PACKED.unpack(packed)
        if magic != MAGIC:
            raise InvalidArgument("not a blob preamble: wrong magic")
        return cls(
            doc_id.decode("utf-8"), rev.decode("utf-8"), size, timestamp, scheme, method, iv, magic
        )

    @classmethod
    def of_stored(cls, blob: bytes) -> "Preamble":
        """The preamble at the head of a stored delivery (``blob``: bytes)."""
        head = blob[:ENCODED_PREAMBLE_BYTES]
        if blob[ENCODED_PREAMBLE_BYTES : ENCODED_PREAMBLE_BYTES + 1] != b" ":
            raise InvalidArgument("not a delivered message: no separator after the preamble")
        return cls.decode(base64.urlsafe_b64decode(head))


@implementer(IStampedBody)
class DeliveredMessage:
    """The blob a delivery stores: the encoded preamble, a space, then the
    message's bytes as ``message`` (an IBodyProducer of known length)
    produces them, streamed. The preamble and space are its stamp: the MX
    retrying a delivery sends the same message, stamped at another time."""

    def __init__(
        self, blob_id: str, message: IBodyProducer, delivered_at: float | None = None
    ) -> None:
        preamble = Preamble(
            blob_id, "0", message.length, int(time.time() if delivered_at is None else delivered_at)
        )
        self._head = base64.urlsafe_b64encode(preamble.encode()) + b" "
        self.stamp_length = len(self._head)
        self._message = message
        self.length = len(self._head) + message.length

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._head)
        return self._message.startProducing(consumer)

    def pauseProducing(self) -> None:
        self._message.pauseProducing()

    def resumeProducing(self) -> None:
        self._message.resumeProducing()

    def stopProducing(self) -> None:
        self._message.stopProducing()
