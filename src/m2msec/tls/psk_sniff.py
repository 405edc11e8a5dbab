"""Read a client's psk_identity off the wire before OpenSSL does (RFC 4279, RFC 8446 4.2.11).

OpenSSL asks for a PSK from inside ``SSL_do_handshake`` and wants the answer at once. The
MAF framework (TS-0003 8.2.2.3, Entity B resolving an unknown KcId at the MAF) and the
GBA framework (seed 000 8.2.3.2, the NAF fetching Ks_NAF from the BSF over Zn) can only
answer after a network round trip. So the engine looks at the client's plaintext
handshake first: when it finds the identity it holds the bytes back, lets the
application resolve the identity asynchronously, and feeds OpenSSL afterwards, when the
synchronous callback can answer from what was fetched.

Where the identity travels in clear:

* TLS/DTLS 1.2: the ClientKeyExchange of a PSK suite starts with ``psk_identity<0..2^16-1>``
  (RFC 4279 2, also for the DHE/ECDHE_PSK variants of RFC 4279 3 and RFC 5489).
* TLS 1.3: the ClientHello's ``pre_shared_key`` extension (type 41) lists the
  identities the client offers.

Everything here is a pure parser over bytes: no OpenSSL, no sockets. It stops at the
client's ChangeCipherSpec (or once TLS 1.3's ClientHello is read), after which the
handshake is encrypted and nothing more can be learnt.
"""

from __future__ import annotations

from m2msec.tls._psk import MAX_RECEIVED_IDENTITY_LEN

_CHANGE_CIPHER_SPEC = 20
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_HELLO = 2
_CLIENT_KEY_EXCHANGE = 16
_EXT_PRE_SHARED_KEY = 41

#: A TLS 1.3 client may offer several identities; only this many are looked up (the
#: rest are treated as unknown) so one ClientHello cannot fan out into many lookups.
MAX_IDENTITIES = 4

#: Bound on buffered handshake bytes: a ClientHello or ClientKeyExchange is small.
_MAX_BUFFER = 64 * 1024


class PskIdentitySniffer:
    """Incremental parser of the client-to-server plaintext handshake.

    :meth:`feed` takes the bytes the client sent, in order (TLS: any chunking; DTLS:
    whole datagrams), and returns the PSK identities seen for the first time. After
    the client's ChangeCipherSpec, a malformed record or too much data it returns
    nothing more: OpenSSL, which sees the same bytes, then decides.
    """

    def __init__(self, *, datagram: bool = False) -> None:
        self._datagram = datagram
        self._records = bytearray()  # TLS only: bytes of an incomplete record
        self._handshake = bytearray()  # TLS only: handshake bytes across records
        self._fragments: dict[int, tuple[int, bytearray, set[tuple[int, int]]]] = {}
        self._seen: list[bytes] = []
        self._done = False
        self._server = bytearray()
        self._server_done = False
        self.cipher_suite: int | None = None
        """IANA id of the suite in the server's ServerHello, once seen (1.2 and 1.3)."""

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> list[bytes]:
        if self._done or not data:
            return []
        before = len(self._seen)
        try:
            if self._datagram:
                self._feed_datagram(data)
            else:
                self._feed_stream(data)
        except _Stop:
            self._done = True
        return self._seen[before:]

    def observe_server(self, data: bytes) -> None:
        """The server's own output, to learn the negotiated suite from its ServerHello."""
        if self._server_done or not data:
            return
        if self._datagram:
            view = memoryview(data)
            while len(view) >= 13 and not self._server_done:
                length = int.from_bytes(view[11:13], "big")
                body = bytes(view[13 : 13 + length])
                if view[0] == _HANDSHAKE and len(body) >= 12 and body[0] == _SERVER_HELLO:
                    self._server_hello(body[12 : 12 + int.from_bytes(body[9:12], "big")])
                view = view[13 + length :]
            return
        self._server += data
        if len(self._server) >= 9 and self._server[0] == _HANDSHAKE:
            if self._server[5] == _SERVER_HELLO:
                self._server_hello(bytes(self._server[9:]))
                if self.cipher_suite is not None:
                    self._server.clear()
            else:
                self._server_done = True
        elif len(self._server) >= 1 and self._server[0] != _HANDSHAKE:
            self._server_done = True
        if len(self._server) > _MAX_BUFFER:
            self._server_done = True

    def _server_hello(self, body: bytes) -> None:
        # legacy_version(2) random(32) session_id<0..32> cipher_suite(2)
        if len(body) < 35:
            return
        pos = 35 + body[34]
        if len(body) >= pos + 2:
            self.cipher_suite = int.from_bytes(body[pos : pos + 2], "big")
            self._server_done = True

    # -- TLS ------------------------------------------------------------------------------
    def _feed_stream(self, data: bytes) -> None:
        self._records += data
        if len(self._records) > _MAX_BUFFER:
            raise _Stop
        while len(self._records) >= 5:
            ctype = self._records[0]
            length = int.from_bytes(self._records[3:5], "big")
            if len(self._records) < 5 + length:
                return
            body = bytes(self._records[5 : 5 + length])
            del self._records[: 5 + length]
            if ctype == _CHANGE_CIPHER_SPEC:
                raise _Stop
            if ctype != _HANDSHAKE:
                continue  # alerts and the like: nothing to learn
            self._handshake += body
            if len(self._handshake) > _MAX_BUFFER:
                raise _Stop
            while len(self._handshake) >= 4:
                mlen = int.from_bytes(self._handshake[1:4], "big")
                if len(self._handshake) < 4 + mlen:
                    break
                mtype = self._handshake[0]
                msg = bytes(self._handshake[4 : 4 + mlen])
                del self._handshake[: 4 + mlen]
                self._message(mtype, msg)

    # -- DTLS -----------------------------------------------------------------------------
    def _feed_datagram(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view) >= 13:
            ctype = view[0]
            epoch = int.from_bytes(view[3:5], "big")
            length = int.from_bytes(view[11:13], "big")
            body = bytes(view[13 : 13 + length])
            view = view[13 + length :]
            if len(body) < length:
                return  # truncated datagram: ignore the rest
            if ctype == _CHANGE_CIPHER_SPEC:
                raise _Stop
            if ctype != _HANDSHAKE or epoch != 0:
                continue
            self._dtls_handshake(body)

    def _dtls_handshake(self, body: bytes) -> None:
        # A record may hold several handshake fragments (RFC 6347 4.2.2).
        while len(body) >= 12:
            mtype = body[0]
            mlen = int.from_bytes(body[1:4], "big")
            seq = int.from_bytes(body[4:6], "big")
            offset = int.from_bytes(body[6:9], "big")
            flen = int.from_bytes(body[9:12], "big")
            frag = body[12 : 12 + flen]
            body = body[12 + flen :]
            if len(frag) < flen or offset + flen > mlen or mlen > _MAX_BUFFER:
                return
            if mtype not in (_CLIENT_HELLO, _CLIENT_KEY_EXCHANGE):
                continue
            if offset == 0 and flen == mlen:
                self._message(mtype, frag)
                continue
            # Fragmented message: reassemble by message_seq.
            entry = self._fragments.get(seq)
            if entry is None:
                if len(self._fragments) >= 8:
                    return
                entry = (mlen, bytearray(mlen), set())
                self._fragments[seq] = entry
            total, buf, parts = entry
            if total != mlen:
                return
            buf[offset : offset + flen] = frag
            parts.add((offset, flen))
            if _covered(parts, mlen):
                del self._fragments[seq]
                self._message(mtype, bytes(buf))

    # -- messages -------------------------------------------------------------------------
    def _message(self, mtype: int, msg: bytes) -> None:
        if mtype == _CLIENT_KEY_EXCHANGE:
            if len(msg) >= 2:
                n = int.from_bytes(msg[0:2], "big")
                if 0 < n <= MAX_RECEIVED_IDENTITY_LEN and len(msg) >= 2 + n:
                    self._add(msg[2 : 2 + n])
            raise _Stop  # nothing of interest follows in clear
        if mtype == _CLIENT_HELLO:
            for identity in _client_hello_psk_identities(msg, self._datagram):
                self._add(identity)

    def _add(self, identity: bytes) -> None:
        if identity not in self._seen and len(self._seen) < MAX_IDENTITIES:
            self._seen.append(identity)


class _Stop(Exception):
    """Nothing more to learn from this handshake."""


def _covered(parts: set[tuple[int, int]], total: int) -> bool:
    end = 0
    for offset, length in sorted(parts):
        if offset > end:
            return False
        end = max(end, offset + length)
    return end >= total


def _client_hello_psk_identities(msg: bytes, datagram: bool) -> list[bytes]:
    """The identities of a ClientHello's pre_shared_key extension, or [] (never raises)."""
    try:
        pos = 2 + 32  # legacy_version, random
        sid_len = msg[pos]
        pos += 1 + sid_len
        if datagram:
            pos += 1 + msg[pos]  # DTLS cookie
        suites_len = int.from_bytes(msg[pos : pos + 2], "big")
        pos += 2 + suites_len
        pos += 1 + msg[pos]  # compression methods
        if pos + 2 > len(msg):
            return []
        ext_end = pos + 2 + int.from_bytes(msg[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(ext_end, len(msg)):
            etype = int.from_bytes(msg[pos : pos + 2], "big")
            elen = int.from_bytes(msg[pos + 2 : pos + 4], "big")
            ext = msg[pos + 4 : pos + 4 + elen]
            pos += 4 + elen
            if etype != _EXT_PRE_SHARED_KEY:
                continue
            out: list[bytes] = []
            ids_len = int.from_bytes(ext[0:2], "big")
            ipos, iend = 2, min(2 + ids_len, len(ext))
            while ipos + 2 <= iend:
                n = int.from_bytes(ext[ipos : ipos + 2], "big")
                identity = ext[ipos + 2 : ipos + 2 + n]
                ipos += 2 + n + 4  # identity, obfuscated_ticket_age
                if 0 < n <= MAX_RECEIVED_IDENTITY_LEN and len(identity) == n:
                    out.append(identity)
            return out
    except IndexError:
        return []
    return []
