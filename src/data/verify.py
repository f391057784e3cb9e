"""Check every sample of a split and collect every problem, like mmcls' verify_dataset
(``tools/verify_dataset.py``, and ``--check_data=True`` before training).

The dataset module says what a problem is (its ``scan`` for the layout, its
``check_sample`` for one sample's files); this module only runs the checks, in worker
processes when asked, and never stops at the first failure.
"""
import multiprocessing
from functools import partial

from src.data.transforms import DataError


def _message(check, sample):
    try:
        check(sample)
    except DataError as err:
        return str(err)
    return None


def run_checks(check, samples, nproc=1):
    """Messages of the samples for which ``check(sample)`` raises DataError, in order."""
    job = partial(_message, check)
    if nproc <= 1:
        return [m for m in map(job, samples) if m]
    with multiprocessing.Pool(nproc) as pool:
        return [m for m in pool.imap(job, samples, chunksize=8) if m]


def raise_on_problems(problems):
    if problems:
        listed = "\n  ".join(problems)
        raise DataError(f"dataset check failed, {len(problems)} problem(s):\n  {listed}")
