"""UIDs the product names, with the conformance statement's defaults (requirements §3)."""

import re

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP instance
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
US = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# The 8 storage classes (F.4.2.3.1).
DEFAULT_STORAGE_CLASSES = (US_RETIRED, US, US_MULTIFRAME_RETIRED, US_MULTIFRAME, CR, CT, MR, SC)
# PC-02: JPEG Baseline is accepted only for the US classes and Secondary Capture.
JPEG_BASELINE_CLASSES = (US_RETIRED, US, US_MULTIFRAME_RETIRED, US_MULTIFRAME, SC)
# PC-03: STORAGE-SCP's preference when a context offers several transfer syntaxes.
SCP_TS_PREFERENCE = (JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE)

# AE-11 / D-16: two Implementation Class UIDs under the product's root. Until the company has
# an organisation root these are fixed 2.25 (UUID-derived) UIDs; never change them in a release.
IMPLEMENTATION_UID_SCP = "2.25.183957046316862104547163297403926355841"  # STORAGE-SCP
IMPLEMENTATION_UID_QR_SCU = "2.25.270133460311227545287366358659390170513"  # QUERY-RETRIEVE-SCP, STORAGE-SCU

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: str) -> bool:
    """PS3.5 9.1: dot-separated numeric components without leading zeros, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def implementation_version_name(version: str) -> str:
    """AE-10 / D-16: one Implementation Version Name for all AEs, derived from the release."""
    return ("APPL_" + version)[:16]
