"""RunContext: what one quantization run owns besides the model: its seed, its device, its per-run caches
and its diagnostics. Process-wide torch settings changed for the run are restored when it ends.

Stages receive the context instead of reading or writing module-level state, so two runs in one process
(a sweep, the tests) cannot see each other's caches, seeds or thread settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .diagnostics import Diagnostics


@dataclass
class RunContext:
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    cache: dict[str, Any] = field(default_factory=dict)  # per-run memos (e.g. mixed-precision sensitivities)
    _saved: dict[str, Any] = field(default_factory=dict, repr=False)

    def __enter__(self) -> "RunContext":
        """Seed torch's and NumPy's global generators with ``seed`` (stages that have not moved to
        ``generator``/``rng`` still draw from them); everything changed is restored by ``__exit__``."""
        self._saved = {"threads": torch.get_num_threads(), "cpu_rng": torch.get_rng_state(),
                       "np_rng": np.random.get_state(), "cudnn_det": torch.backends.cudnn.deterministic,
                       "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.backends.cudnn.deterministic = True
        return self

    def __exit__(self, *exc) -> None:
        s = self._saved
        torch.set_num_threads(s["threads"])
        torch.set_rng_state(s["cpu_rng"])
        np.random.set_state(s["np_rng"])
        torch.backends.cudnn.deterministic = s["cudnn_det"]
        if s["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(s["cuda_rng"])
