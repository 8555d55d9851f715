"""The worker process a trial runs in, which Tune reuses for the next trial.

With ``reuse_actors`` (``trainables.study``) a finished trial's worker runs the next trial of
the same resources: the imported modules, the CUDA context and the loaded datasets
(``sgstudy.loaded_data``) stay; what a trial trains with must not. The session seeds the
Python, NumPy and torch RNGs and builds the model, optimiser and scaler afresh; here a trial
sets the torch thread count Ray gave the worker (``prepare_worker``), frees its session's
memory when it ends (``release_memory``), and records where and when it began
(``TrialEntry``); ``start_state`` digests the state a session starts from, so a trial in a
reused worker can be compared with one in a fresh process.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

from sgstudy.tracking_layout import TRIAL_ENTERED_TAG, WORKER_PID_TAG, WORKER_TRIAL_TAG

START_STATE_TAGS = (
    "sgstudy.start.params_sha256",
    "sgstudy.start.rng_sha256",
    "sgstudy.start.optimizer_state_entries",
    "sgstudy.start.torch_threads",
)
# How long Tune waits for the thread of a trial it stopped (ASHA) to end before it reuses the
# worker for the next trial. The thread first ends its MLflow run and frees its session, which
# can outlast Tune's default of 2 s on a busy node, and a failed hand-over fails the next trial.
THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
THREAD_TIMEOUT_S = "60"

# The trials this process has started; with actor reuse one worker runs several in turn.
_trials_started = itertools.count()


@dataclass(frozen=True)
class TrialEntry:
    """When and where a trial's function was entered.

    clock:  ``time.perf_counter()`` at entry (for the fixed cost)
    wall:   ``time.time()`` at entry (Unix seconds, comparable across processes)
    pid:    the worker process
    index:  trials this process had started before (0: a fresh process)
    """

    clock: float
    wall: float
    pid: int
    index: int

    @staticmethod
    def now() -> TrialEntry:
        return TrialEntry(time.perf_counter(), time.time(), os.getpid(), next(_trials_started))

    def tags(self) -> dict[str, str]:
        return {
            WORKER_PID_TAG: str(self.pid),
            WORKER_TRIAL_TAG: str(self.index),
            TRIAL_ENTERED_TAG: f"{self.wall:.3f}",
        }


def prepare_worker() -> None:
    """Process-wide settings a trial must not inherit from the worker's previous trial."""
    import torch

    os.environ.setdefault(THREAD_TIMEOUT_ENV, THREAD_TIMEOUT_S)
    # Ray sets OMP_NUM_THREADS to the CPUs the worker holds; torch read it once, at import.
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def release_memory(device: Any, first_trial: bool) -> None:
    """Frees what a finished session left in reference cycles (and CUDA's cached blocks), so
    the next trial in this worker starts with none of this one's memory.

    A full collection walks every object of the process: 0.25 s once Ray, MLflow and torch
    are loaded. After the process's first trial, what survives it (modules, Ray's own state)
    lives as long as the process, so it is frozen out of later collections, which then see
    only what later trials allocate.
    """
    import gc

    import torch

    gc.collect()
    if first_trial:
        gc.freeze()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


def start_state(session: Any) -> dict[str, str]:
    """``START_STATE_TAGS`` of a session just started: sha256 of the model's parameters and
    buffers (names and bytes), sha256 of the Python, NumPy and torch RNG states, and the
    number of parameters the optimiser holds state for (0 for a fresh one), and torch's
    intra-op thread count."""
    import hashlib
    import random

    import numpy as np
    import torch

    from sgstudy.engine import unwrap

    params = hashlib.sha256()
    for name, tensor in sorted(unwrap(session.model).state_dict().items()):
        params.update(name.encode())
        params.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    rng = hashlib.sha256(repr(random.getstate()).encode())
    kind, keys, position, has_gauss, cached = np.random.get_state()
    rng.update(f"{kind} {position} {has_gauss} {cached!r}".encode() + keys.tobytes())
    rng.update(torch.get_rng_state().numpy().tobytes())
    values = (
        params.hexdigest(),
        rng.hexdigest(),
        str(len(session.optimizer.state)),
        str(torch.get_num_threads()),
    )
    return dict(zip(START_STATE_TAGS, values, strict=True))
