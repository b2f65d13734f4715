"""The one error type for bad input: a one-line message naming the file and the problem."""


class InputError(ValueError):
    """Bad input from the user (file, config, checkpoint). The CLI prints it and exits 2."""
