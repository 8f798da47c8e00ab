"""lmforge trainer service."""
