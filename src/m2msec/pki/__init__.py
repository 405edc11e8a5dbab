"""The certificate side of TS-0003 8.1.2 and 10.1.1, below the certificate framework.

``authority`` is the small CA (issuing, revocation records, CRL publishing),
``profiles`` builds the certificate profiles of 10.1.1, ``names`` holds the naming and
key-strength checks that the CA and the certificate framework share, ``revocation``
checks certificates against a CRL.
"""
