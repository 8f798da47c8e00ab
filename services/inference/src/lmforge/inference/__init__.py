"""lmforge inference service: reconciles registry aliases with Triton and serves generation."""
