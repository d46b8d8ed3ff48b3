"""DICOM over TLS: the box's certificate, key and CA bundle, and the TLS contexts made from them (SE-07..SE-10)."""
