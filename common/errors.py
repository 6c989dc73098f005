"""The one exception type for invalid user input.

Every CLI catches :class:`ConfigError`, prints its message on one line and exits
with status 2; library callers get an ordinary ``ValueError`` subclass.
"""


class ConfigError(ValueError):
    """Invalid user input. The message names the bad value and what is allowed."""


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in ``[minimum, maximum]``, else raise ConfigError."""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not _is_integral(value):
        raise ConfigError(f"{name} = {value!r} is not an integer; {name} must be {allowed}")
    # as typed: 1000000000 for 1e9, but 1e+300 rather than the 301 digits of int(1e300)
    shown = f"{value:g}" if isinstance(value, float) and abs(value) >= 1e15 else str(int(value))
    value = int(value)
    if value < minimum:
        raise ConfigError(f"{name} = {shown} is too small; {name} must be {allowed}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} = {shown} is too large; {name} must be {allowed}")
    return value


def check_positive(name: str, value, *, allow_zero: bool = False, minimum: float | None = None,
                   maximum: float | None = None, why: str = "") -> float:
    """Return ``value`` as a float if it is finite and positive (or zero if allowed), and within
    ``[minimum, maximum]`` when given (``why``: the reason for the bounds, added to the message)."""
    if minimum is not None or maximum is not None:
        lo = ("[0" if allow_zero else "(0") if minimum is None else f"[{minimum:g}"
        hi = "inf)" if maximum is None else f"{maximum:g}]"
        allowed = f"a finite number in {lo}, {hi}" + (f" ({why})" if why else "")
    else:
        allowed = f"a finite number {'>= 0' if allow_zero else '> 0'}"
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} = {value!r} is not a number; {name} must be {allowed}") from None
    import math
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise ConfigError(f"{name} = {value!r} is not allowed; {name} must be {allowed}")
    if minimum is not None and x < minimum:
        raise ConfigError(f"{name} = {x:g} is too small; {name} must be {allowed}")
    if maximum is not None and x > maximum:
        raise ConfigError(f"{name} = {x:g} is too large; {name} must be {allowed}")
    return x


def check_device(name: str, value, *, also: str = ""):
    """Return ``value`` as a ``torch.device`` if it names a usable CPU or CUDA device, else raise ConfigError.

    Only ``cpu`` and ``cuda[:i]`` are supported (``meta``, ``mps`` and the rest are refused up front);
    a CUDA device must exist on this machine. ``also``: other accepted words for the message ("auto")."""
    import torch

    allowed = ", ".join(w for w in (also, "cpu", "cuda", "cuda:i") if w)
    try:
        dev = torch.device(value)
    except Exception:
        raise ConfigError(f"{name} = {value!r} is not a torch device; use one of: {allowed}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{name} = {value!r} is not supported; use one of: {allowed}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{name} = {value!r} but no CUDA GPU is available; use {name} = 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{name} = {value!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


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
