"""The Security Association services of seed 003 (TS-0003 7.3 of that text).

Establish, Update, Send/Receive Secured Message and Remove, in the vocabulary of the
seed's functional model (7.3.1.1): the Initiator Agent and the Initiator's SA Management
on one side, the Responder's SA Management and the Responder Agent on the other, the
relationships ra / rb / rc between them. docs/sa.md maps the model onto (D)TLS
(docs/readings.md A-24); this package is sans-IO, above the frameworks and below the
servers.

- :mod:`m2msec.sa.records`: the SA record both sides keep (:class:`~.records.SaRecord`).
- :mod:`m2msec.sa.store`: those records and their history in SQLite or PostgreSQL, written
  in batches off the handshake path (:class:`~.store.SaRecordStore`, docs/sa.md section 6).
- :mod:`m2msec.sa.flows`: the information flows of tables 23-44, typed and checked.
- :mod:`m2msec.sa.agent`: the Responder and Initiator Agents (protocols, defaults).
- :mod:`m2msec.sa.machine`: the state table of one SA, the record sink.
- :mod:`m2msec.sa.management`: the Responder's and the Initiator's SA Management.
- :mod:`m2msec.sa.outcomes`: what the managements answer and raise.
"""
