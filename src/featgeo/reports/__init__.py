"""Reports: figures of the sparsity-pattern analyses and the comparative report across matrices
(seed 000's ``multi_seed_clustering_analysis.py`` plots and ``generate_comparative_report.py``).

Figure functions live in :mod:`featgeo.reports.plots` and return figures; writing them is
:func:`featgeo.reports.figures.save_figure`'s job. Heavy imports happen on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featgeo.reports.comparative import ReportResult, ReportSection, build_report
    from featgeo.reports.figures import save_figure

__all__ = ["ReportResult", "ReportSection", "build_report", "save_figure"]

_LAZY = {
    "ReportResult": "featgeo.reports.comparative",
    "ReportSection": "featgeo.reports.comparative",
    "build_report": "featgeo.reports.comparative",
    "save_figure": "featgeo.reports.figures",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featgeo.reports' has no attribute '{name}'")
