"""The ``evaluate`` component: base vs tuned (vs champion) on the test split, with quality gates."""

import os

# PyTorch's OpenMP threads spin-wait at barriers; when the CPUs are shared with other processes a spinning
# thread that gets descheduled stalls every op (measured: a SmolLM2 forward 7x slower on a loaded 2-core
# machine). A passive wait policy costs little when the machine is idle. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
