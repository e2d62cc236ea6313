"""The one exception type the command line turns into a single clear error line."""


class ForesightError(Exception):
    """A problem with the user's input (config, data, checkpoint, command line).

    The message must say what is wrong and what to do about it; the CLI prints it as one line
    (``foresight: error: <message>``) and exits with status 2, without a traceback.
    """


_ADVICE = {
    "ENOSPC": "no space left on the device; free some space or choose another location",
    "EDQUOT": "disk quota exceeded; free some space or choose another location",
    "EROFS": "the file system is read-only; choose a writable location",
    "EACCES": "permission denied; choose a location you can write to, or fix its permissions",
    "EPERM": "operation not permitted; choose a location you can write to, or fix its permissions",
    "EEXIST": "it already exists; remove it or choose another name",
    "EISDIR": "it is a folder where a file is expected; give a file path",
    "ENOTDIR": "a part of this path is a file where a folder is expected; choose another path",
    "ENAMETOOLONG": "the name is too long for the file system; choose a shorter name",
    "ENOENT": "it does not exist; check the path",
    "ENOTEMPTY": "the folder is not empty; empty it or choose another",
    "EMFILE": "too many open files; raise the limit (ulimit -n)",
}


def os_error_line(e: OSError) -> str:
    """One line for an operating-system error: the path, what went wrong, what to do (no traceback)."""
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    advice = _ADVICE.get(name, e.strerror or str(e) or type(e).__name__)
    suffix = f" ({name})" if name else ""
    return f"{where}: {advice}" + suffix if where else f"{advice}" + suffix
