"""The plugin errors (mirror the WIT ``plugin-error`` variant)."""


class PluginError(Exception):
    """Base of the three errors a plugin may raise on purpose."""

    kind = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind.replace('-', ' ')}: {self.message}"


class InvalidConfig(PluginError):
    """The stage's config is unusable; name the field at fault."""

    kind = "invalid-config"


class InvalidInput(PluginError):
    """This request's input cannot be processed."""

    kind = "invalid-input"


class Internal(PluginError):
    """A bug or an unexpected state inside the plugin."""

    kind = "internal"
