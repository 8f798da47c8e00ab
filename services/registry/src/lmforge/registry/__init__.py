"""lmforge registry service: model versions, aliases, promotion gates and the audit log."""
