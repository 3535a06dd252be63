"""The worker floor: RQ jobs (tick, poll a source, deliver to a drain) and the clock.

Jobs are plain functions that take ids. They find their settings through
:mod:`worker.context` and open their own database connection per job: RQ forks
a work horse per job, and a connection must never cross a fork.
"""
