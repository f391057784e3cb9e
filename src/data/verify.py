"""Check every sample of a split and collect every problem, like mmcls' verify_dataset
(``tools/verify_dataset.py``, and ``--check_data=True`` before training).

The dataset module says what a problem is (its ``scan`` for the layout, its
``check_sample`` for one sample's files); this module only runs the checks, in worker
processes when asked, and never stops at the first failure.
"""
import multiprocessing
from functools import partial

from src.data.transforms import DataError


def _outcome(check, sample):
    try:
        return None, check(sample)
    except DataError as err:
        return str(err), None


def run_checks(check, samples, nproc=1):
    """(message, result) per sample, in order: the DataError message of ``check(sample)``
    (None when it passed) and what it returned (None when it raised)."""
    job = partial(_outcome, check)
    if nproc <= 1:
        return list(map(job, samples))
    with multiprocessing.Pool(nproc) as pool:
        return list(pool.imap(job, samples, chunksize=8))


def raise_on_problems(problems):
    if problems:
        listed = "\n  ".join(problems)
        raise DataError(f"dataset check failed, {len(problems)} problem(s):\n  {listed}")
