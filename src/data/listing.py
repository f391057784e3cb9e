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


def walk_files(folder, skip_dir=None):
    """(file paths under ``folder``, repeated folders): every file of ``folder`` and its
    subfolders (sorted), symlinks followed, but each real folder entered once.

    A symlink to a folder already entered (a loop such as ``a/b -> ..``, which ``find -L``
    reports as "File system loop detected", or a second link to one folder) is not
    entered again: it would list the same files many times over. Such folders come back
    as the second list, for the caller to report. ``skip_dir(path)`` True: not entered."""
    files, repeated = [], []
    entered = {os.path.realpath(folder): folder}  # real folder -> the path it was entered by
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            if skip_dir is not None and skip_dir(path):
                continue
            real = os.path.realpath(path)
            if real not in entered:
                entered[real] = path
                kept.append(name)
            elif os.path.islink(path):
                repeated.append(f"{path} -> {real}")
            else:  # a real folder that a link, listed earlier, entered already
                repeated.append(f"{path} (already listed through {entered[real]})")
        dirnames[:] = kept
        files.extend(os.path.join(dirpath, name) for name in sorted(filenames))
    return files, repeated


def repeated_folders_message(folder, repeated):
    """The problem headline for ``walk_files``' repeated folders under ``folder``."""
    return (f"{len(repeated)} folder(s) under {folder} lead to a folder already listed (a "
            f"symlink loop or a second link to one folder), so their files would count more "
            f"than once; remove the link(s):")


def scan_files(folder, suffix):
    """(relative paths, repeated folders): the files under ``folder`` (sorted, subfolders
    included, each real folder once; see ``walk_files``) whose name ends with ``suffix``."""
    files, repeated = walk_files(folder)
    return [os.path.relpath(path, folder) for path in files if path.endswith(suffix)], repeated


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
