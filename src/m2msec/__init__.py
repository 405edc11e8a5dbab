"""m2msec: oneM2M security associations (TS-0003 clause 8.2, 8.3 and 7.3).

The library gives asyncio servers and clients that establish a oneM2M security
association with one of the Security Association Establishment Frameworks and
hand the application an authenticated :class:`~m2msec.tls.context.SecurityContext`.
"""

__version__ = "0.1.0"
