"""The service layer: the asyncio drivers above the sans-IO HTTP connections (issue 10).

The sans-IO connections live one layer down, side by side as h11 keeps both roles:
:mod:`m2msec.bindings.http` (server) and :mod:`m2msec.bindings.http_client` (client).
Here: :mod:`m2msec.service.limits` holds every limit an HTTP connection runs under, in one
place; :mod:`m2msec.service.server` is the one server driver (``HttpService``, under the
gateway, the MAF and the BSF), :mod:`m2msec.service.lifecycle` their one lifecycle
(``ServerLifecycle``); :mod:`m2msec.service.client` the one client driver
(``HttpClient``), with :mod:`m2msec.service.onem2m_client` (``OneM2MClient``, Entity A's
oneM2M requests) on top; :mod:`m2msec.service.streams` the byte-stream shape they drive.
:mod:`m2msec.service.coap_client` (``CoapClient``) drives the sans-IO CoAP client side,
:mod:`m2msec.bindings.coap.exchange`, over one DTLS association.
"""
