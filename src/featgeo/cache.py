"""Where featgeo keeps what it builds once: the embedded model cache and the corpus."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEATGEO_CACHE``, else ``$XDG_CACHE_HOME/featgeo``, else ``~/.cache/featgeo``."""
    explicit = os.environ.get("FEATGEO_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "featgeo"
