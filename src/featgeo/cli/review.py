"""``featgeo review``: the review site over Stage 1 (and Stage 3) and the sparsity report."""

from __future__ import annotations

from featgeo.cli.aanet import (
    _MAX_KDIFF,
    _MIN_LATENTS,
    _MIN_PCT,
    _MONOTONIC,
    _SIGMA_A,
    _SIGMA_BC,
    _opt,
    quality_filters,
)
from featgeo.progress import console


def review(
    stage1_dir: str = _opt(
        None, "stage1-dir", help="Stage 1's --save-dir: the AANet page (scatter, curves, latents)."
    ),
    stage3_dir: str = _opt(
        None, "stage3-dir", help="Stage 3's --save-dir of that Stage 1 run: vertex samples."
    ),
    sparsity_report: str = _opt(
        None, "sparsity-report", help="`featgeo hamming report --out` folder: the sparsity page."
    ),
    out: str = _opt("review", "out", help="The site's folder (replaced whole)."),
    min_latents: int = _MIN_LATENTS,
    min_pct_decrease: float = _MIN_PCT,
    max_k_differential: int = _MAX_KDIFF,
    require_monotonic: bool = _MONOTONIC,
    sigma_a: float = _SIGMA_A,
    sigma_bc: float = _SIGMA_BC,
    samples_shown: int = _opt(
        20, "samples-shown", help="Vertex samples shown per vertex, nearest first (0: all)."
    ),
) -> None:
    """A self-contained site to filter and click through both pipelines' results (no server,
    no network: open index.html in a browser)."""
    from featgeo.archetypes.selection import SelectionCriteria
    from featgeo.reports.review import build_review

    criteria = SelectionCriteria(
        filters=quality_filters(
            min_latents, min_pct_decrease, max_k_differential, require_monotonic
        ),
        sigma_a=sigma_a,
        sigma_bc=sigma_bc,
    )
    result = build_review(
        out,
        stage1_dir=stage1_dir,
        stage3_dir=stage3_dir,
        sparsity_report=sparsity_report,
        criteria=criteria,
        samples_shown=samples_shown,
    )
    for n, count in result.n_shown.items():
        console.print(f"AANet page: n_clusters={n}, {count} clusters")
    if result.stage3_clusters:
        console.print(f"Stage 3: {len(result.stage3_clusters)} clusters with results")
    console.print(f"Wrote {', '.join(['index.html', *result.pages])} to {result.out}")
    console.print(f"Open it: {(result.out / 'index.html').resolve().as_uri()}", soft_wrap=True)
