"""Which errors are the user's to fix, and their message.

Every error type of the project (``ConfigError``, ``DataError``, ``CheckpointError`` ...)
derives from ``UserError``: its message names the file, key or value at fault and what was
expected, so an entry point prints it as one line. Any other exception is a bug (ours or a
library's) and keeps its traceback (``src.utils.logger.fail_on_error``).

MindSpore's data pipeline does not let our exceptions through: a ``DataError`` raised while
a ``GeneratorDataset`` reads a sample reaches the caller as a ``RuntimeError`` whose text
holds the Python traceback (ending ``DataError: <message>``) followed by a C++ stack.
``user_message`` finds the message in that text.
"""
import re

# Ends a Python traceback's exception text inside MindSpore's pipeline error report.
_PIPELINE_SECTION_END = re.compile(r"\n\s*\n-{10,}")


class UserError(Exception):
    """Base of the project's error types: a bad input, named in the message."""


class InputError(UserError, ValueError):
    """A bad argument of the Python API, or an input that does not fit the model (a
    ValueError for code that catches those)."""


def _user_error_names():
    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            names.add(sub.__name__)
            todo.append(sub)
    return names


def _wrapped_message(text):
    """The message of the last of our errors quoted in ``text`` (a pipeline error report), or
    None. The report quotes it as ``[module.]ClassName: message``, up to the next section."""
    names = "|".join(sorted(map(re.escape, _user_error_names())))
    if not names:
        return None
    matches = list(re.finditer(rf"^(?:[\w.]+\.)?(?:{names}): ", text, flags=re.MULTILINE))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    end = _PIPELINE_SECTION_END.search(rest)
    return (rest[:end.start()] if end else rest).strip() or None


def user_message(err):
    """The message to show for ``err`` if it is a user error (directly, as the cause of
    another exception, or quoted by MindSpore's data pipeline); None if it is a bug."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, UserError):
            return str(err)
        if isinstance(err, RuntimeError):
            message = _wrapped_message(str(err))
            if message is not None:
                return message
        err = err.__cause__
    return None
