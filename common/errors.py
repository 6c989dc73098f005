"""The one exception type for invalid user input.

Every CLI catches :class:`ConfigError`, prints its message on one line and exits
with status 2; library callers get an ordinary ``ValueError`` subclass.
"""


class ConfigError(ValueError):
    """Invalid user input. The message names the bad value and what is allowed."""


def check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``, else raise ConfigError."""
    if isinstance(value, bool) or not _is_integral(value):
        raise ConfigError(f"{name} = {value!r} is not an integer; {name} must be an integer >= {minimum}")
    value = int(value)
    if value < minimum:
        raise ConfigError(f"{name} = {value} is too small; {name} must be an integer >= {minimum}")
    return value


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and positive (or zero if allowed)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r} is not a number; {name} must be a finite number "
                          f"{'>= 0' if allow_zero else '> 0'}") from None
    import math
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise ConfigError(f"{name} = {value!r} is not allowed; {name} must be a finite number "
                          f"{'>= 0' if allow_zero else '> 0'}")
    return x


def check_choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError listing them."""
    if value not in choices:
        raise ConfigError(f"{name} = {value!r} is unknown; choose one of: {', '.join(map(str, choices))}")
    return value


def _is_integral(value) -> bool:
    try:
        import numbers
        if isinstance(value, numbers.Integral):
            return True
        if isinstance(value, float):
            return value.is_integer()
        return False
    except Exception:
        return False
