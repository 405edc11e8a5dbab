"""DTLS 1.2 (RFC 6347) on the sans-IO engine; see :mod:`m2msec.tls.dtls.server`."""
