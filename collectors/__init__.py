"""Protocol collectors and the shared ingestion pipeline: validate → spool → acknowledge → store."""
