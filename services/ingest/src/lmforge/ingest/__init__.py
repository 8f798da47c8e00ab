"""lmforge ingest service."""
