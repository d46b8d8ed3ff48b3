"""The DICOM vocabulary every layer may use: status codes (`status`) and UIDs (`uids`).

A leaf: it imports nothing of the appliance, so store, query, config and commitment name a
status or a UID without depending on the protocol adapters in `dicom/`.
"""
