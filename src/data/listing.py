"""A split's file list and everything wrong with its layout, in one object.

Every dataset module's ``scan(spec, split)`` returns a ``Listing``. Training asks it for
its samples (``samples_or_raise``: any layout problem stops the run, the message quoting a
few files per problem); ``tools/verify_dataset.py`` reads all of its problems, every file
named, and then checks the contents of every sample it did find. Both therefore see the
same files, found by the same code.
"""
import os

from src.data.transforms import DataError

MAX_LISTED = 5  # files quoted per problem in a training error before "... and N more"


def format_items(items, limit=None):
    """The items one per line (indented), at most ``limit`` of them then '... and N more'."""
    items = list(items)
    shown = items if limit is None else items[:limit]
    text = "".join(f"\n  {item}" for item in shown)
    if len(shown) < len(items):
        text += f"\n  ... and {len(items) - len(shown)} more"
    return text


def scan_files(folder, suffix):
    """Relative paths (sorted, subfolders included) of the files under ``folder`` whose
    name ends with ``suffix``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(suffix):
                found.append(os.path.relpath(os.path.join(dirpath, name), folder))
    return found


class Listing:
    """The samples found in one split and the layout problems met while finding them.

    A problem is a headline (what rule is broken) and the files breaking it; a problem
    without files (a missing folder) means the split could not be listed at all.
    """

    def __init__(self, split):
        self.split = split
        self.samples = []
        self._problems = []

    def problem(self, headline, items=()):
        self._problems.append((headline, list(items)))

    @property
    def ok(self):
        return not self._problems

    def messages(self, limit=None):
        """One message per problem, naming its files (all of them unless ``limit``)."""
        return [headline + format_items(items, limit) for headline, items in self._problems]

    def samples_or_raise(self):
        if self._problems:
            raise DataError("\n".join(self.messages(MAX_LISTED)))
        return self.samples
