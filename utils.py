"""What every command-line script shares and nothing else owns: the exit protocol (run_cli: one
line "error: ..." and an exit status instead of a traceback, 130 for Ctrl-C, 143 for SIGTERM) and
the stop signals that protocol handles (signals_held keeps a block such as a checkpoint write whole).

Imports no other crackseg module, so every module may import it.
"""
import signal
import sys
from contextlib import contextmanager


class ReportedError(Exception):
    """A problem the user can act on (a bad file, a missing run, a full disk): run_cli prints its
    message as one line and exits with its exit_code, without a traceback."""
    exit_code = 2


class Terminated(BaseException):
    """SIGTERM, turned into an exception so the scripts clean up as for Ctrl-C.

    A BaseException, like KeyboardInterrupt: library code's `except Exception` must not swallow it."""


# ---------------------------------------------------------------- stop signals

# The Ctrl-C or SIGTERM received (0: none) and how many signals_held blocks are open. A flag, not
# only an exception: an exception the handler raises inside library code that swallows it (a
# __del__ run by the garbage collector prints "Exception ignored" and goes on) would lose the
# signal, so train.py also asks raise_requested_stop() at every step.
_stop = {"signal": 0, "held": 0}


def _on_stop_signal(signum, frame):
    _stop["signal"] = signum
    if not _stop["held"]:
        raise_requested_stop()


def raise_requested_stop() -> None:
    """Raise KeyboardInterrupt or Terminated if Ctrl-C or SIGTERM arrived since run_cli started."""
    if _stop["signal"] == signal.SIGINT:
        raise KeyboardInterrupt
    if _stop["signal"] == signal.SIGTERM:
        raise Terminated()


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block is done, then stop the program (blocks nest).

    A flag rather than a signal mask: a blocked signal is delivered to another thread, and
    Python then runs the handler in the main thread anyway, inside the block."""
    _stop["held"] += 1
    try:
        yield
    finally:
        _stop["held"] -= 1
    if not _stop["held"]:
        raise_requested_stop()


# ---------------------------------------------------------------- command-line entry

def run_cli(main) -> None:
    """Run `main()`: user errors exit 2 (a full disk 1) with one clear message, Ctrl-C 130, SIGTERM 143."""
    _stop.update(signal=0, held=0)
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        code = main()
    except ReportedError as err:   # DatasetError, RunError (Diverged: 1), visuals.WriteError (the machine: 1)
        print(f"error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        code = 130
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        code = 143
    sys.exit(code or 0)
