"""lmforge registry service."""
