"""dmsim: replay kernel memory traces against a simulated x86-64 direct map."""

import hashlib
import os

__version__ = "0.1.0"


def _numba_cache_dir() -> None:
    """Key numba's on-disk cache by the source of every jitted module.

    numba checks a cached function against its own file only: a change in a
    module it calls (cpa.py under replay.py, buddy.py under placement.py) would
    otherwise load stale machine code and give wrong numbers. NUMBA_CACHE_DIR
    set by the user wins; numba reads it when first imported, so this runs
    before any dmsim module imports numba."""
    if "NUMBA_CACHE_DIR" in os.environ:
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
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "dmsim", f"numba-{digest.hexdigest()[:16]}")


_numba_cache_dir()
