"""The oneM2M CoAP binding (TS-0008) on aiocoap's message codec, one module per concern.

TS-0003 10.2.1 secures the CoAP binding with DTLS 1.2; this package is the CoAP side and
never touches a socket: CoAP messages are bytes in and bytes out.

* :mod:`~m2msec.bindings.coap.options`: the oneM2M option table in both numberings
  (TS-0008 6.2.2.4), Content-Formats (6.2.2.2) and aiocoap's codec;
* :mod:`~m2msec.bindings.coap.mapping`: request and response primitives <-> CoAP
  messages (TS-0008 6.2, 6.4);
* :mod:`~m2msec.bindings.coap.messages`: the sans-IO server side of the message layer
  (RFC 7252 4, 5.2; RFC 7959 block-wise; TS-0008 6.3, 6.5);
* :mod:`~m2msec.bindings.coap.exchange`: the sans-IO client side (Entity A): Message
  IDs, reply matching, both block-wise directions (RFC 7252 4.2, 5.2; RFC 7959).

The client's asyncio driver is :mod:`m2msec.service.coap_client`, the server's
:mod:`m2msec.servers.coap_gateway`. Import names from
the module that defines them; this package re-exports nothing.
"""
