"""The one exception type for bad user input.

train.py and eval.py catch it and print its message as a single line, so every
message must name the problem and the fix.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong shape, an unknown name."""
