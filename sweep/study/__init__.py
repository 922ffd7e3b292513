"""A study declared: the rules of a study file, the training settings derived from
``mlp.config``, the validated spec, the search space under the parameter budget, the bounded
TPE sampler, and creating or joining the study.

Import the module you need (``from sweep.study.spec import load_spec``): the package
re-exports nothing, so that reading a stored spec (``sweep status``) never loads the sampler
or ``joining`` (tests/sweep/test_startup.py).
"""
