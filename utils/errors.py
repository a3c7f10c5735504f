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


def storage_error_line(error):
    """The one line of an OSError that is a disk or permission problem, else None."""
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRORS:
        return None
    where = f" {error.filename}" if error.filename else ""
    return (f"cannot write or read{where}: {error.strerror}; free space or fix the permissions there "
            f"(what was written before is kept), then run the command again")


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
    except OSError as error:
        line = storage_error_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(WriteFailed.exit_code)
