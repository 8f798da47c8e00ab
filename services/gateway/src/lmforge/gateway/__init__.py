"""lmforge gateway service: the public REST API (authentication, scopes, routing)."""
