"""One trial's work: the objective that trains it, the study's artifact store and the
trial's checkpoints in it, its clean-up when it ends, and the best model as files.

Import the module you need (``from sweep.trial.objective import Objective``): the package
re-exports nothing; none of it is imported by ``sweep status`` or ``import sweep``
(tests/sweep/test_startup.py).
"""
