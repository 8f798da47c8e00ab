"""lmforge trainer service: fine-tunes causal language models on dataset versions."""
