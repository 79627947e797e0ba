"""How the multi-process tests' workers end."""

import os
import sys


def exit_without_teardown() -> None:
    """Leave without the interpreter's teardown: on a loaded machine, gloo threads still joinable
    there abort the process ("terminate called without an active exception") after its work is
    done and written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
