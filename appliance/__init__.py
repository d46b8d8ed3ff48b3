"""DICOM archive appliance: STORAGE-SCP, QUERY-RETRIEVE-SCP and STORAGE-SCU in one service."""

__version__ = "0.1.0"
