"""Test-only: with $SWEEP_TEST_STALL_EPOCH = N and $SWEEP_TEST_STALL_FILE = path on PYTHONPATH
(tests/sweep/stall), the first process of a test to finish training epoch N of any trial writes
its pid to that file and sleeps there, before epoch N is checkpointed: a test then kills it "in
the middle of epoch N+1"'s work, deterministically, however fast an epoch is."""

import os

if os.environ.get("SWEEP_TEST_STALL_EPOCH"):
    import time

    import mlp
    import mlp.train

    _stall_at = int(os.environ["SWEEP_TEST_STALL_EPOCH"])
    _marker = os.environ["SWEEP_TEST_STALL_FILE"]
    _fit = mlp.train.fit

    def fit(model, data, config, *, on_epoch=None, **kwargs):  # type: ignore[no-untyped-def]
        def stalling(m):  # type: ignore[no-untyped-def]
            stop = on_epoch(m) if on_epoch is not None else None
            if m.epoch == _stall_at:
                try:
                    fd = os.open(_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return stop
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                time.sleep(600)
            return stop

        return _fit(model, data, config, on_epoch=stalling, **kwargs)

    mlp.train.fit = mlp.fit = fit
