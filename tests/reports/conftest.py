"""``review_inputs``: everything ``featgeo review`` reads, made by the real commands on tiny
inputs once per session: a Stage 1 run, a Stage 3 run (MODE 2, with vertex samples) on it, a
``featgeo hamming report`` (with a scan section) and the review site built from all three.

The corpus is hostile: every document's title (its file name) holds markup and its text holds a
``<script>``/``<img onerror>`` line after every sentence, so that the vertex-sample chunks carry
it to the site, which must show it as text and never run it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

HOSTILE = (
    '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned=2"> &amp; "quotes"'
)
"""Inserted after every sentence of every document of the corpus."""
TITLE_MARKUP = "<b>"
"""In every document's file name (its title): ``doc000<b>.txt``."""
STORE_TOKENS = 2500
QUOTA = 4
THRESHOLD = 0.78  # random tiny AANets: most tokens sit near the simplex centre (0.816 away)
CONTEXT = 64
SAMPLES_SHOWN = 2  # fewer than QUOTA: the page shows a choice of the records
# Selection relaxed so that random Stage 1 curves select clusters (as tests/archetypes/
# test_stage3.py): every filter passes and the thresholds are mu.
SELECT_OPTIONS = ["--no-require-monotonic", "--min-pct-decrease", "0", "--max-k-differential",
                  "10", "--sigma-a", "0", "--sigma-bc", "0"]  # fmt: skip
STAGE1_OPTIONS = ["--n-clusters", "4,6", "--k-min", "2", "--k-max", "4", "--max-steps", "40",
                  "--early-stop-patience", "20", "--loss-smoothing-window", "8",
                  "--context-size", str(CONTEXT), "--store-tokens", "2000", "--device", "cpu",
                  "--models-per-unit", "6", "--workers", "1"]  # fmt: skip


def invoke(args: list[str]) -> str:
    from featgeo.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def hostile_corpus(folder: Path, write_text_corpus) -> Path:
    """``write_text_corpus`` with :data:`HOSTILE` after every sentence of every document, and
    :data:`TITLE_MARKUP` in every file name."""
    plain = write_text_corpus(folder.with_name(folder.name + "-plain"))
    folder.mkdir(parents=True)
    for path in sorted(plain.glob("*.txt")):
        sentences = re.split(r"(?<=\.) ", path.read_text(encoding="utf-8"))
        parts = []
        for sentence in sentences:
            parts += [sentence, HOSTILE]
        name = f"{path.stem}{TITLE_MARKUP}.txt"
        (folder / name).write_text(" ".join(parts) + "\n", encoding="utf-8")
    return folder


def tiny_sae(folder: Path) -> Path:
    """stage_env's TopK SAE (d_in 64, d_sae 48, k 6, block 1, latents 0 and 1 dead)."""
    from featgeo.sae import SAEConfig, SparseAutoencoder, save_sae

    cfg = SAEConfig(d_in=64, d_sae=48, architecture="topk", k=6,
                    hook_name="blocks.1.hook_resid_post")  # fmt: skip
    sae = SparseAutoencoder.from_config(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc[[0, 1]] = -1e4
    return save_sae(sae, folder)


def mask_matrices(folder: Path) -> Path:
    """Two methods x two components of small random 0/1 pruning masks (a ``featgeo prune``
    export tree), of different densities so that the report has something to compare."""
    rng = np.random.default_rng(0)
    for method, density in (("wanda", 0.5), ("sparsegpt", 0.3)):
        (folder / method).mkdir(parents=True)
        for component, shape in (("mlp.down_proj", (24, 32)), ("self_attn.q_proj", (24, 24))):
            mask = (rng.random(shape) < density).astype(np.float32)
            torch.save(torch.from_numpy(mask), folder / method / f"layer0-{component}.pt")
    return folder


def sparsity_report(root: Path, mp: pytest.MonkeyPatch) -> Path:
    """``featgeo hamming multi`` on each mask, ``featgeo hamming scan`` over them, and
    ``featgeo hamming report`` on both (run in ``root``: no default --seeds-dir there)."""
    matrices = mask_matrices(root / "masks")
    results = root / "analysis_results"
    for path in sorted(matrices.glob("*/*.pt")):
        invoke(["hamming", "multi", path, "--n-executions", "2", "--n-features", "8",
                "--n-clusters", "2", "--output-json",
                results / f"{path.parent.name}_{path.stem}.json"])  # fmt: skip
    scan = root / "scan"
    invoke(["hamming", "scan", "--matrices-dir", matrices, "--out", scan, "--device", "cpu"])
    report = root / "report"
    mp.chdir(root)
    invoke(["hamming", "report", "--results-dir", results, "--out", report, "--scan-csv",
            scan / "scan.csv"])  # fmt: skip
    return report


@pytest.fixture(scope="session")
def review_inputs(tmp_path_factory, write_text_corpus_fn, tiny_llama_builder) -> dict:
    """Paths: ``stage1``, ``stage3``, ``report``, ``site`` (built from all three with
    ``site_args``), ``corpus``, ``model``, ``sae``, ``root``, ``cache``; and the settings used
    (``select_options``, ``samples_shown``, ``quota``, ``threshold``, ``seconds``)."""
    start = time.perf_counter()
    root = tmp_path_factory.mktemp("review")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FEATGEO_CACHE", str(root / "cache"))
            mp.setenv("HF_HUB_OFFLINE", "1")
            mp.setenv("TRANSFORMERS_OFFLINE", "1")
            corpus = hostile_corpus(root / "corpus", write_text_corpus_fn)
            model = tiny_llama_builder(root / "model", corpus_dir=corpus)
            sae = tiny_sae(root / "sae")
            stage1 = root / "stage1"
            invoke(["aanet", "stage1", "--sae", sae, "--model", model, "--corpus", corpus,
                    "--save-dir", stage1, *STAGE1_OPTIONS])  # fmt: skip
            stage3 = root / "stage3"
            invoke(["aanet", "stage3", "--csv-dir", stage1, "--save-dir", stage3,
                    "--n-clusters-list", "4,6", *SELECT_OPTIONS, "--skip-training",
                    "--store-tokens", str(STORE_TOKENS), "--samples-per-vertex", str(QUOTA),
                    "--vertex-threshold", str(THRESHOLD), "--device", "cpu", "--workers", "1",
                    "--models-per-unit", "6"])  # fmt: skip
            report = sparsity_report(root / "sparsity", mp)
            site = root / "site"
            site_args = ["review", "--stage1-dir", stage1, "--stage3-dir", stage3,
                         "--sparsity-report", report, *SELECT_OPTIONS, "--samples-shown",
                         str(SAMPLES_SHOWN), "--out", site]  # fmt: skip
            invoke(site_args)
    finally:
        torch.set_num_threads(threads)
    return {
        "root": root,
        "cache": root / "cache",
        "corpus": corpus,
        "model": model,
        "sae": sae,
        "stage1": stage1,
        "stage3": stage3,
        "report": report,
        "site": site,
        "site_args": [str(a) for a in site_args],
        "select_options": list(SELECT_OPTIONS),
        "samples_shown": SAMPLES_SHOWN,
        "quota": QUOTA,
        "threshold": THRESHOLD,
        "hostile": HOSTILE,
        "title_markup": TITLE_MARKUP,
        "seconds": time.perf_counter() - start,
    }


@pytest.fixture(scope="session")
def write_text_corpus_fn(request):
    """``write_text_corpus`` of tests/conftest.py, taken from the session's plugins: every test
    folder's conftest is a module named ``conftest``, so it cannot be imported by name."""
    top = Path(__file__).resolve().parents[1] / "conftest.py"
    for plugin in request.config.pluginmanager.get_plugins():
        if Path(getattr(plugin, "__file__", None) or "").resolve() == top:
            return plugin.write_text_corpus
    raise RuntimeError(f"{top} is not loaded")
