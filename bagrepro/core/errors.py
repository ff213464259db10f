"""User-facing errors.

Anything a user can cause (a bad path, a wrong checkpoint, an unknown model name, an image that
cannot be read) raises a subclass of :class:`BagreproError`. ``run_all.py`` prints ``str(error)`` as
one line prefixed with ``error:`` and exits with status 2; there is no traceback for these. Keep the
message to one line that says what went wrong and where (a path, a URL, a name).
"""


class BagreproError(Exception):
    """Base class of every error a user can cause; its message is shown as one line."""


class ConfigError(BagreproError):
    """Unknown experiment, model, profile or flag value."""


class MissingRoleError(ConfigError):
    """The run has no model standing in for a paper role an experiment needs: the runner skips that
    experiment with this line and goes on."""


class WeightsError(BagreproError):
    """Weights that cannot be found, downloaded, verified or loaded."""


class DataError(BagreproError):
    """A data folder whose layout is not recognised, or an image that cannot be used."""


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space, cut to
    ``limit`` characters (with '...') when given: how a message from a library becomes part of ours."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
