"""DIMSE status codes the appliance sends, named after PS3.4 / PS3.7 and the conformance statement."""

SUCCESS = 0x0000
# PS3.4 B.2.3 / seed T "STORAGE-SCP AE C-STORE Response Status Return Reasons"
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (ST-07: disk full, write failure)
DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class (ST-08..ST-10)
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (ST-12)
COERCION_OF_DATA_ELEMENTS = 0xB000  # Warning, only when enabled (ST-14)
# PY-02: last-resort answer to an unexpected exception in our handler (pynetdicom's code).
UNEXPECTED_FAILURE = 0xC211

# PS3.4 C.4.1.1.4 / seed T "QUERY-RETRIEVE-SCP AE C-FIND Response Status Return Behavior"
IDENTIFIER_MISMATCH = 0xA900  # Failed: Identifier does not match SOP Class (QF-17)
UNABLE_TO_PROCESS = 0xC001  # Failed: Unable to process (QF-15, QF-16)
CANCEL = 0xFE00  # Matching terminated due to Cancel (QF-19)
PENDING = 0xFF00  # Matches are continuing, all optional keys supported (QF-14)
PENDING_UNSUPPORTED_KEYS = 0xFF01  # Matches are continuing, some optional keys not supported
# PS3.7 C.4 range "Unable to process" (pynetdicom's own code for a failing C-FIND handler):
# the last-resort answer to an unexpected exception while answering a C-FIND.
UNEXPECTED_FIND_FAILURE = 0xC311

# PS3.4 C.4.2.1.5 / seed T "QUERY-RETRIEVE-SCP AE C-MOVE Response Status Return Behavior"
UNABLE_TO_CALCULATE_MATCHES = 0xA701  # Refused: the index cannot list the matches (QM-13)
SUBOPERATIONS_FAILED = 0xA702  # Refused: unable to perform sub-operations (QM-11, QM-12, D-5)
MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: Move Destination unknown (QM-04)

# PS3.4 J.3.2 / seed T "STORAGE-SCP AE N-ACTION Response Status" and Failure Reasons (SC-02..SC-08)
PROCESSING_FAILURE = 0x0110  # N-ACTION refused: database or system failure (SC-03); failure reason
NO_SUCH_OBJECT_INSTANCE = 0x0112  # failure reason: not in the index (SC-06)
CLASS_INSTANCE_CONFLICT = 0x0119  # failure reason: indexed under another SOP class
MISSING_ATTRIBUTE = 0x0120  # N-ACTION: a required attribute is absent (SC-04)
MISSING_ATTRIBUTE_VALUE = 0x0121  # N-ACTION: a required attribute is empty (SC-05)
NO_SUCH_ACTION = 0x0123  # N-ACTION: Action Type ID other than 1 (SC-01)
SOP_CLASS_NOT_SUPPORTED = 0x0122  # failure reason: not a class commitment covers (SC-10)
ATTRIBUTE_LIST_ERROR = 0x0107  # N-EVENT-REPORT-RSP warning (SC-18)
