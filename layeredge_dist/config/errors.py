"""The one exception of the config package.

Every configuration problem -- a bad file, an unknown key, a value of the wrong type or out of range -- is
reported as a :class:`ConfigError` whose message starts with the dotted path of the offending field.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A run configuration that cannot be loaded or is invalid.

    ``path`` is the dotted field path (``"train.steps"``, ``"codecs.edges.s0->s1.forward"``), or the file
    path for file-level problems, or ``""`` when neither applies. ``str(err)`` is ``"<path>: <message>"``.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        # keep the two-argument constructor picklable (errors may cross process boundaries)
        return (type(self), (self.path, self.message))
