"""lmforge preprocess service."""
