"""The archive on disk: storage area, index, ingest, export."""

INDEX_NAME = "index.sqlite"  # the index's file in the data directory
