"""The one exception type the command line turns into a single clear error line."""


class ForesightError(Exception):
    """A problem with the user's input (config, data, checkpoint, command line).

    The message must say what is wrong and what to do about it; the CLI prints it as one line
    (``foresight: error: <message>``) and exits with status 2, without a traceback.
    """
