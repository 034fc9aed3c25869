"""dmsim: replay kernel memory traces against a simulated x86-64 direct map."""

import hashlib
import os
import sys

__version__ = "0.1.0"


def _numba_cache_dir() -> None:
    """Key numba's on-disk cache by the source of every jitted module.

    numba checks a cached function against its own file only: a change in a
    module it calls (cpa.py under replay.py, buddy.py under placement.py) would
    otherwise load stale machine code and give wrong numbers. NUMBA_CACHE_DIR
    set by the user wins. numba reads the environment once, when first imported:
    this runs before any dmsim module imports numba, and when something imported
    numba first, the directory goes into numba's config as well (it is read when a
    dmsim module's functions are decorated, which is later)."""
    if "NUMBA_CACHE_DIR" in os.environ:
        _numba_config(os.environ["NUMBA_CACHE_DIR"])
        return
    here = os.path.dirname(__file__)
    digest = hashlib.sha1(__version__.encode())
    for sub in ("core", "trace", "gen"):
        folder = os.path.join(here, sub)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + f.read())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "dmsim", f"numba-{digest.hexdigest()[:16]}")
    os.environ["NUMBA_CACHE_DIR"] = path
    _numba_config(path)


def _numba_config(path: str) -> None:
    """numba.core.config.CACHE_DIR = path, when numba is imported already (without
    importing it otherwise: `dmsim --help` does not load numba)."""
    if "numba" in sys.modules:
        from numba.core import config

        config.CACHE_DIR = path


_numba_cache_dir()
