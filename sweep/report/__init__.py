"""Everything a report or ``sweep status`` reads and draws, from the database alone: the
status summary, values any client stored read as untrusted input, the report's narrow trial
records, the report folder and its figures.

Import the module you need (``from sweep.report.writer import write_report``): the package
re-exports nothing, so that ``sweep status`` (``summary``) never loads matplotlib
(``figures``) or the report writer (tests/sweep/test_startup.py).
"""
