"""One side of one DTLS 1.2 association (RFC 6347) on the sans-IO TLS engine.

TS-0003 10.2.1 makes DTLS 1.2 the security of the CoAP binding and 10.2.2 names
TLS_PSK_WITH_AES_128_CCM_8 its mandatory PSK suite (``PSK_SUITES_DTLS`` lists it first).
:class:`DTLSEngine` adds to :class:`~m2msec.tls.engine.TLSEngine` what datagrams need
(RFC 6347 references in brackets):

* Datagrams and MTU [4.1.1]: OpenSSL's output is split on record boundaries and packed
  into datagrams of at most ``mtu`` octets (1200 by default, safe on any IPv6 path and
  on IPv4 paths with tunnels); a record is never split. The MTU is also given to OpenSSL
  (with ``OP_NO_QUERY_MTU``, as memory BIOs cannot report one) so that it fragments
  handshake messages to fit [4.2.3]. Application data is never fragmented: a message
  larger than :attr:`DTLSEngine.max_payload` is refused with
  :class:`DatagramTooLargeError`, as DTLS keeps message boundaries and the CoAP layer
  must use block-wise transfer instead.
* Retransmission timers [4.2.4]: OpenSSL's timer (1 s, doubling per timeout, capped at
  60 s) is exposed as :meth:`DTLSEngine.timeout` / :meth:`DTLSEngine.handle_timeout`;
  on top of it every handshake has a total deadline (``handshake_timeout``, 30 s by
  default), after which it fails with "DTLS handshake timed out".
* A Finished that fails to authenticate is discarded without an alert [4.1.2.7], so a
  wrong PSK surfaces as "DTLS handshake timed out (wrong PSK?)" at the deadline.
"""

from __future__ import annotations

import logging
import time

from OpenSSL import SSL

from m2msec.errors import ConfigurationError, HandshakeError, M2MSecError
from m2msec.tls.dtls.records import (
    RECORD_HEADER_LEN,
    Clock,
    pack_datagrams,
    record_seq,
    split_records,
)
from m2msec.tls.engine import TLSEngine
from m2msec.tls.profiles import TLSProfile, Transport
from m2msec.tls.sessions import ClientSession
from m2msec.tls.state import HandshakeState

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MTU",
    "MAX_MTU",
    "MIN_MTU",
    "DTLSEngine",
    "DatagramTooLargeError",
]

log = logging.getLogger(__name__)

#: Path-MTU-safe default datagram size: fits the IPv6 minimum MTU (1280) less headers.
DEFAULT_MTU = 1200
#: OpenSSL refuses smaller MTUs for DTLS (``dtls1_min_mtu``).
MIN_MTU = 256
#: The largest UDP payload over IPv4.
MAX_MTU = 65507
DEFAULT_HANDSHAKE_TIMEOUT = 30.0


class DatagramTooLargeError(M2MSecError, ValueError):
    """Application data that would not fit one record within the MTU."""



class DTLSEngine(TLSEngine):
    """One side of one DTLS 1.2 association (RFC 6347), sans-IO.

    Feed each received datagram to :meth:`receive_datagram`, send every datagram of
    :meth:`datagrams_to_send`, and call :meth:`handle_timeout` once :meth:`timeout`
    seconds have passed. Events are those of :class:`~m2msec.tls.engine.TLSEngine`.
    TS-0003 10.2.1/10.2.2 profiles come from :func:`m2msec.tls.profiles.new_context`
    with ``Transport.DTLS``.

    ``connection`` adopts a server connection that already passed ``DTLSv1_listen``;
    its app data must be a ``HandshakeState``. Alternatively ``state`` replaces the app
    data of the engine's own connection before ``DTLSv1_listen`` runs on it (what
    :class:`DTLSServer` does). ``client_hello_seq`` is the record sequence number of the
    ClientHello that ``DTLSv1_listen`` verified.
    """

    def __init__(
        self,
        profile: TLSProfile,
        *,
        server_name: str | None = None,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        clock: Clock = time.monotonic,
        connection: SSL.Connection | None = None,
        client_hello_seq: int | None = None,
        session: ClientSession | None = None,
        state: HandshakeState | None = None,
    ) -> None:
        if profile.transport is not Transport.DTLS:
            raise ConfigurationError("DTLSEngine needs a profile built for Transport.DTLS")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ConfigurationError(f"DTLS MTU must be within {MIN_MTU}..{MAX_MTU}, not {mtu}")
        if handshake_timeout <= 0:
            raise ConfigurationError("handshake_timeout must be positive")
        super().__init__(profile, server_name=server_name, session=session)
        if connection is not None:
            adopted = connection.get_app_data()
            if not isinstance(adopted, HandshakeState):
                raise ConfigurationError("an adopted DTLS connection needs a HandshakeState")
            self._conn = connection
            self._state = adopted
        elif state is not None:
            # DTLSServer: the engine's own connection runs DTLSv1_listen, with the cookie
            # state as its app data (no second SSL object per handshake).
            self._state = state
            self._conn.set_app_data(state)
        self._state.profile = profile
        # Memory BIOs cannot report a path MTU: without this flag OpenSSL would replace
        # ours with a guess after repeated timeouts.
        self._conn.set_options(SSL.OP_NO_QUERY_MTU)
        self._conn.set_ciphertext_mtu(mtu)
        self.mtu = mtu
        self.handshake_timeout = handshake_timeout
        self._clock = clock
        self._deadline = clock() + handshake_timeout
        self.last_activity = clock()
        # OpenSSL >= 3.2 starts the server's records at sequence number 1 after
        # DTLSv1_listen, whatever the ClientHello's number was. The HelloVerifyRequest
        # already used the number of the ClientHello it answered (RFC 6347 4.2.1); when
        # that number is among those of the server's first flight (as when the client's
        # first ClientHello was lost), the client's replay window drops those records
        # and the handshake stalls until a retransmission. Epoch-0 records carry no MAC and record
        # headers are not part of the handshake transcript, so renumber them to continue
        # from the verified ClientHello's number, as OpenSSL 1.1 did.
        self._epoch0_floor = client_hello_seq
        self._epoch0_offset: int | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def max_payload(self) -> int:
        """The largest application message that fits one record within the MTU.

        Meaningful once the handshake is done (it depends on the negotiated suite).
        """
        size: int = self._conn.get_cleartext_mtu()
        return size

    # -- input ---------------------------------------------------------------------------
    def start(self) -> None:
        """Client side: produce the ClientHello and start the handshake deadline."""
        self._deadline = self._clock() + self.handshake_timeout
        super().start()

    def receive_datagram(self, data: bytes) -> None:
        """One UDP datagram from the peer; it may hold several records.

        Records that fail to parse or authenticate are discarded by OpenSSL without
        ending the association (RFC 6347 4.1.2.7). An empty datagram carries nothing
        (unlike ``receive_data(b"")`` on a stream, it does not mean the peer left).
        """
        if not data:
            return
        self.last_activity = self._clock()
        self.receive_data(data)

    def send(self, data: bytes) -> None:
        """Encrypt one application message into one record.

        Raises :class:`DatagramTooLargeError` when it would not fit the MTU: DTLS keeps
        message boundaries, so splitting it here would hand the peer several messages.
        """
        if not self.handshake_done or self._failed or self._closed:
            raise HandshakeError("no established security association to send on")
        limit = self.max_payload
        if len(data) > limit:
            raise DatagramTooLargeError(
                f"{len(data)} octets exceed the {limit}-octet DTLS payload limit at MTU {self.mtu}"
            )
        self.last_activity = self._clock()
        self._conn.send(data)

    # -- output --------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[bytes]:
        """The pending records packed into datagrams of at most :attr:`mtu` octets."""
        data = self.data_to_send()
        if not data:
            return []
        if self._epoch0_floor is None and len(data) <= self.mtu:
            return [data]  # what packing would give: all records in one datagram
        records = split_records(data)
        if self._epoch0_floor is not None:
            records = [self._renumber(r) for r in records]
            if self._epoch0_offset == 0:
                self._epoch0_floor = None  # OpenSSL's numbers already continue the peer's
        return pack_datagrams(records, self.mtu)

    def _renumber(self, record: bytes) -> bytes:
        if len(record) < RECORD_HEADER_LEN or record[3:5] != b"\0\0":
            return record  # protected records keep OpenSSL's numbers (they are MAC'd)
        seq = record_seq(record)
        if self._epoch0_offset is None:
            assert self._epoch0_floor is not None
            self._epoch0_offset = max(0, self._epoch0_floor - seq)
        new = min(seq + self._epoch0_offset, 2**48 - 1)
        return record[:5] + new.to_bytes(6, "big") + record[11:]

    # -- timers --------------------------------------------------------------------------
    def timeout(self, now: float | None = None) -> float | None:
        """Seconds until :meth:`handle_timeout` is due, or ``None`` if no timer runs.

        The retransmission timer is OpenSSL's (on the wall clock); the handshake
        deadline uses this engine's ``clock`` (or ``now``).
        """
        if self._failed or self._closed:
            return None
        ssl_due: float | None = self._conn.DTLSv1_get_timeout()
        if self.handshake_done:
            return ssl_due
        now = self._clock() if now is None else now
        left = max(0.0, self._deadline - now)
        return left if ssl_due is None else min(ssl_due, left)

    def handle_timeout(self, now: float | None = None) -> None:
        """Retransmit the last flight if OpenSSL's timer expired; fail past the deadline."""
        if self._failed or self._closed:
            return
        now = self._clock() if now is None else now
        if not self.handshake_done and now >= self._deadline:
            self._fail(self._timed_out())
            return
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            # OpenSSL gives up by itself after 12 timeouts; say so in the same words.
            log.debug("DTLS timeout handling failed: %s", exc)
            self._fail(self._timed_out())

    def _timed_out(self) -> str:
        # DTLS drops a Finished that fails to authenticate without an alert (RFC 6347
        # 4.1.2.7), so a wrong PSK shows up as a timeout after the key exchange.
        if self._state.binding is not None and self._state.psk_identity is not None:
            return "DTLS handshake timed out (wrong PSK?)"
        return "DTLS handshake timed out"
