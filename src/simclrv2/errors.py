"""The one exception type the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a path, a config value, a checkpoint that does not fit.

    The message names the offending thing and says how to fix it. The CLI prints it as a
    single line (no traceback unless ``--debug``) and exits with code 2.
    """

    exit_code = 2
