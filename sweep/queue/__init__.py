"""The study database as a work queue: storage URLs and engines, optuna's tables as sweep
reads and writes them, the queue's operations (top-up, claim, release, hand-over, recovery)
and a worker's write-back.

Import the module you need (``from sweep.queue.storage import open_storage``): the package
re-exports nothing, so that ``sweep status``, which reads through ``storage`` and ``tables``,
never loads a worker's ``writeback`` (tests/sweep/test_startup.py).
"""
