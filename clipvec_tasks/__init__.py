"""clipvec's domain library: sources, decoding, models, embedding, Lance datasets.

Plain functions and small classes; no Prefect, no Hydra (``flows/`` wires them).
"""

import os

# Lance warns on stderr when a run's first write creates its dataset: the normal case here
os.environ.setdefault("LANCE_LOG", "error")

__version__ = "0.1.0"
