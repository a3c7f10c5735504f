"""The one exception type for bad user input.

train.py and eval.py catch it and print its message as a single line, so every
message must name the problem and the fix.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong shape, an unknown name."""
    exit_code = 2


def run_command_line(main):
    """Runs a command's main(); a UserError ends it with one line on stderr and its exit status
    (2; 130 for a training run stopped by a signal)."""
    import sys
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
