"""DTLS 1.2 (RFC 6347) on the sans-IO TLS engine, one module per concern.

TS-0003 10.2.1 makes DTLS 1.2 the security of the CoAP binding. Nothing in this package
opens a socket (the asyncio adapter is :mod:`m2msec.tls.aio_dtls`):

* :mod:`~m2msec.tls.dtls.records`: records and datagrams, ClientHello and
  HelloVerifyRequest on the wire (RFC 6347 4.1, 4.2.1), pure functions;
* :mod:`~m2msec.tls.dtls.cookies`: the stateless cookie exchange (4.2.1);
* :mod:`~m2msec.tls.dtls.engine`: one side of one association, with the MTU and the
  retransmission timers and handshake deadline (4.1.1, 4.2.3, 4.2.4);
* :mod:`~m2msec.tls.dtls.timers`: the server's one heap of handshake timers;
* :mod:`~m2msec.tls.dtls.server`: the responder demultiplexing many peers on one port,
  with its bounds, idle expiry and handshake replacement (4.2.8).

Import names from the module that defines them; this package re-exports nothing.
"""
