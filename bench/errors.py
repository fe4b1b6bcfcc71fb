"""Errors that the command line reports as one line and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: a name, a number, a file or a directory.

    The message is one line that names the bad value and, where there are
    any, the valid choices. The CLI prints it without a traceback and exits
    with status 2.
    """


class DataError(UsageError):
    """A dataset that cannot be found, read or trusted."""


class SuiteInterrupted(Exception):
    """A suite stopped before its end; what finished is on disk, a rerun resumes.

    The CLI prints the message as one line and exits with status 1.
    """


class DiskFull(SuiteInterrupted):
    """The device filled up while writing results; finished runs are kept.

    The CLI prints the message as one line and exits with status 1.
    """

    def __init__(self, path):
        self.path = str(path)
        super().__init__(f"no space left on device writing {self.path}; finished runs are kept; free space and rerun")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: finished runs are kept, the tables rebuilt (exit status 143)."""
