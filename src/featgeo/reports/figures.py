"""Writing figures: PNG files written atomically, and PNG bytes / data URIs for HTML reports."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from featgeo.files import atomic_path

DEFAULT_DPI = 100


def close_figure(fig: Figure) -> None:
    """Release a figure; figures made through pyplot are also dropped from its registry."""
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    fig.clear()


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` (temp file + rename) and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        close_figure(fig)
    return path


def figure_png(fig: Figure, *, dpi: int = DEFAULT_DPI, close: bool = True) -> bytes:
    """The PNG bytes of ``fig`` (closed afterwards unless ``close=False``)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        if close:
            close_figure(fig)
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for embedding a PNG in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
