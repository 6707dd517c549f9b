"""One exception type for every problem with what a user gave us.

Bad input (a missing file, a corrupt image, a wrong shape, an unknown notebook parameter) must end
in one clear sentence that names the thing and the fix, not in a stack trace from deep inside torch.
Every check in the library raises :class:`InputError`, a ``ValueError`` so that callers who already
catch ``ValueError`` keep working.
"""


class InputError(ValueError):
    """Something the user gave (file, folder, array, parameter) is not usable; the message says why and how to fix it."""


class DivergenceError(InputError):
    """Training produced non-finite values (a loss, or pass 1's SR): the run's parameters (usually the learning
    rate) do not work; the message names the step and what was kept."""


def run_command(body) -> int:
    """Run a command-line program's ``body()``: its return value (None = 0) is the exit status; an InputError
    becomes one line ``error: <message>`` on stderr and exit status 2 (no traceback); Ctrl-C one line and
    exit status 130 (outputs are written whole or not at all, so none is left half-written)."""
    import sys

    try:
        return body() or 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the outputs finished before stay, nothing else was written", file=sys.stderr)
        return 130
