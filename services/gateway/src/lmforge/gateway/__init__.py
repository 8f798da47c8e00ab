"""lmforge gateway service."""
