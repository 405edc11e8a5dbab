"""The oneM2M CoAP binding (TS-0008): the mapping (`mapping`) and Entity A's client (`client`)."""
