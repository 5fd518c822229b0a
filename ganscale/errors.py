"""User-facing errors: one line that names the file, key or value, and the fix."""


class GanscaleError(Exception):
    """An error caused by user input (config, files, arguments).

    The CLI prints ``error: <message>`` on one line and exits with code 2; ``--debug``
    shows the traceback. Messages should name the offending key/path/value and the fix.
    """

    exit_code = 2


class ConfigError(GanscaleError):
    """A config file or ``--set`` override is invalid."""
