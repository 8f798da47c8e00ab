"""lmforge.devstack: real local servers and the embedded stack runner (``lmforge up``)."""
