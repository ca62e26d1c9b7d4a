"""The host's log: ``log.info("...")`` and friends. In a component the lines go to the host's
log tagged with the plugin and request id; natively (pytest) to Python's ``logging``."""

try:  # inside the component (componentize-py puts the bindings on the path)
    from wit_world.imports import host as _host

    def _write(level: str, message: str) -> None:
        _host.log(getattr(_host.Level, level.upper()), str(message))

except ImportError:  # natively
    import logging as _logging

    _logger = _logging.getLogger("pipehost.plugin")
    _levels = {"trace": 5, "debug": 10, "info": 20, "warn": 30, "error": 40}

    def _write(level: str, message: str) -> None:
        _logger.log(_levels[level], "%s", message)


def trace(message: str) -> None:
    _write("trace", message)


def debug(message: str) -> None:
    _write("debug", message)


def info(message: str) -> None:
    _write("info", message)


def warn(message: str) -> None:
    _write("warn", message)


def error(message: str) -> None:
    _write("error", message)
