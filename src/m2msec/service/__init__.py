"""The service layer under the gateway, the MAF and the BSF (issue 10, item 1).

:mod:`m2msec.service.limits` holds every limit an HTTP connection runs under, in one place;
:mod:`m2msec.service.server` is the one asyncio driver of the sans-IO
:class:`~m2msec.bindings.http.HttpServerConnection`; :mod:`m2msec.service.client` the one
HTTP/1.1 client (sans-IO connection and its asyncio driver) with a body cap.
"""
