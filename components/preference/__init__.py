"""The ``preference`` component: DPO and KTO on prepared preference data, resumable like ``train``."""

import os

# As in components/train/__init__.py: a passive OpenMP wait policy, set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
