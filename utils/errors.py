"""The one exception type for bad user input, and how a command ends on it.

train.py and eval.py catch it and print its message as a single line, so every
message must name the problem and the fix.

Exit codes: 0 done; 2 bad input (UserError); 74 a file could not be written or read
(WriteFailed, or the system's "no space left", "permission denied", "read-only file
system", "disk quota exceeded" or I/O error: what was written before is kept);
130 a training run stopped by SIGINT/SIGTERM after writing a checkpoint.
"""
import errno

# The system errors a command reports in one line (a disk or permission problem, not a bug).
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong shape, an unknown name."""
    exit_code = 2


class WriteFailed(UserError):
    """A file could not be written (disk full, no permission); its partial files are removed
    and what was written before is kept."""
    exit_code = 74  # sysexits.h EX_IOERR


def storage_cause(error):
    """The cause in a few words when `error` (an OSError or a TensorFlow error) is a disk or
    permission problem, else None."""
    if isinstance(error, OSError):
        return error.strerror or str(error) if error.errno in STORAGE_ERRORS else None
    if type(error).__module__.startswith("tensorflow"):
        text = (getattr(error, "message", None) or str(error)).lower()
        for known in ("No space left on device", "Permission denied", "Read-only file system", "Disk quota exceeded"):
            if known.lower() in text:
                return known
    return None


def storage_error_line(error):
    """The one line of a disk or permission error (an OSError or a TensorFlow error), else None."""
    cause = storage_cause(error)
    if cause is None:
        return None
    filename = getattr(error, "filename", None)
    where = f"cannot write or read {filename}" if filename else "a write or read failed"
    if not filename and not isinstance(error, OSError):
        where += f" ({(getattr(error, 'message', None) or str(error)).strip().splitlines()[0][:300]})"
    return (f"{where}: {cause}; free space or fix the permissions there (what was written before is kept), "
            f"then run the command again")


def run_command_line(main):
    """Runs a command's main(); a UserError ends it with one line on stderr and its exit status
    (2; 74 for a failed write; 130 for a training run stopped by a signal); so does a disk or
    permission error of the system (74)."""
    import sys
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:  # a full disk or a permission, met by the system or by TensorFlow
        line = storage_error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(WriteFailed.exit_code)
