"""The archive on disk: storage area, index, ingest, export."""

INDEX_NAME = "index.sqlite"  # the index's file in the data directory
# Present while `service-tool restore` fills the data directory (restore.py): the service does
# not start on a half-restored archive.
RESTORE_MARKER = "restore-incomplete"
