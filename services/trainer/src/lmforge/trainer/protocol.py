"""What the executor and a training process exchange, besides the spec and result files.

- progress: JSON lines on the process's stdout, ``{"step": N, ...numbers}`` (losses, learning
  rate, eval metrics); the executor keeps each as the job's metric history;
- the exit code: 0 with a result file; ``REFUSED_EXIT_CODE`` with ``{"error": ...}`` in the
  result file when the run refused the job before training (the reason is the job's error);
  anything else is a crash, reported with the end of the process's stderr.
"""

from __future__ import annotations

REFUSED_EXIT_CODE = 3
