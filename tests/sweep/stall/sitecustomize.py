"""Test-only: with $SWEEP_TEST_STALL_EPOCH = N and $SWEEP_TEST_STALL_FILE = path on PYTHONPATH
(tests/sweep/stall), the first process of a test to finish training epoch N of any trial writes
its pid to that file and sleeps there, before epoch N is checkpointed: a test then kills it "in
the middle of epoch N+1"'s work, deterministically, however fast an epoch is.

With $SWEEP_TEST_STALL_THEN = a point and $SWEEP_TEST_STALL_THEN_FILE = another path as well, once
a process has stalled in epoch N, the first other process to reach that point stalls there too
and writes its pid to the second file, so a test knows where a sibling worker was when the
launcher ended its run:

  - ``epoch``: the end of any epoch it trains but the first (the one before is checkpointed,
    this one not yet);
  - ``ended``: a trial's end, after ``study.tell`` and before its clean-up
    (``sweep.trial.cleanup.trial_ended``) starts;
  - ``unnamed``: inside a trial's end, after files were deleted and before their names are
    (``sweep.queue.artifact_names.forget``).

With $SWEEP_TEST_EPOCH_SECONDS = S (with or without a stall), every epoch of every process ends
with S seconds of sleep after its training and before it is reported and checkpointed: trials
that take long enough for a batch scheduler's time limit to land in one (tests/sweep/test_slurm.py)
without burning the CPUs a whole array shares, and whose every kill lands "mid-epoch".
"""

import os

if os.environ.get("SWEEP_TEST_STALL_EPOCH") or os.environ.get("SWEEP_TEST_EPOCH_SECONDS"):
    import time

    import mlp
    import mlp.train

    _stall_at = int(os.environ.get("SWEEP_TEST_STALL_EPOCH") or 0)
    _pace = float(os.environ.get("SWEEP_TEST_EPOCH_SECONDS") or 0)
    _marker = os.environ.get("SWEEP_TEST_STALL_FILE", "")
    _then = os.environ.get("SWEEP_TEST_STALL_THEN")
    _then_marker = os.environ.get("SWEEP_TEST_STALL_THEN_FILE", "")
    _fit = mlp.train.fit

    def _stall(marker: str) -> bool:
        """Stall here (for good) if no process has stalled at ``marker`` yet; else False."""
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(600)
        return True

    def _reached(point: str) -> None:
        """Stall at ``point`` if it is the second stall's and another process has stalled in
        epoch N."""
        if point != _then:
            return
        try:
            first = open(_marker).read()
        except OSError:
            return
        if first and first != str(os.getpid()):
            _stall(_then_marker)

    def fit(model, data, config, *, on_epoch=None, **kwargs):  # type: ignore[no-untyped-def]
        def stalling(m):  # type: ignore[no-untyped-def]
            time.sleep(_pace)
            stop = on_epoch(m) if on_epoch is not None else None
            if not (m.epoch == _stall_at and _stall(_marker)) and m.epoch > 1:
                _reached("epoch")
            return stop

        return _fit(model, data, config, on_epoch=stalling, **kwargs)

    mlp.train.fit = mlp.fit = fit

    if _then in ("ended", "unnamed"):
        # Before sweep.worker imports trial_ended by name.
        import sweep.queue.artifact_names as _names
        import sweep.trial.cleanup as _cleanup

        _ended, _forget = _cleanup.trial_ended, _names.forget
        _ending = [False]

        def trial_ended(store, study, trial):  # type: ignore[no-untyped-def]
            _reached("ended")
            _ending[0] = True
            try:
                return _ended(store, study, trial)
            finally:
                _ending[0] = False

        def forget(engine, names):  # type: ignore[no-untyped-def]
            if _ending[0] and names:
                _reached("unnamed")
            return _forget(engine, names)

        _cleanup.trial_ended, _names.forget = trial_ended, forget
