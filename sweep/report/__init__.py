"""Everything a report or ``sweep status`` shows and draws, from the database: the status
summary, values any client stored read as untrusted input, how a trial is shown, the report
folder and its figures. What they read, and the SQL that reads it, is the queue's
(``sweep.queue.status_reads``, ``sweep.queue.report_reads``); the one thing read from
elsewhere is a few training digits, to show a study's distortions
(``sweep.report.distortions``).

Import the module you need (``from sweep.report.writer import write_report``): the package
re-exports nothing, so that ``sweep status`` (``summary``) never loads matplotlib
(``figures``) or the report writer (tests/sweep/test_startup.py).
"""
