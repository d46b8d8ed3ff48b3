"""DIMSE status codes the appliance sends, named after PS3.4 / PS3.7 and the conformance statement."""

SUCCESS = 0x0000
# PS3.4 B.2.3 / seed T "STORAGE-SCP AE C-STORE Response Status Return Reasons"
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (ST-07: disk full, write failure)
DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class (ST-08..ST-10)
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (ST-12)
COERCION_OF_DATA_ELEMENTS = 0xB000  # Warning, only when enabled (ST-14)
# PY-02: last-resort answer to an unexpected exception in our handler (pynetdicom's code).
UNEXPECTED_FAILURE = 0xC211
