"""``featgeo demo``: both pipelines end to end on the embedded model and corpus.

The demo is a chain of ordinary ``featgeo`` commands, kept here as data (:func:`demo_steps`) and
run one subprocess per step, so that each step keeps its own progress bars, its own one-line
errors and its own reuse of finished work (prune, sae train, aanet stage1/stage3 reuse a finished
run with the same settings; the others rewrite their outputs). The chain::

    prune (magnitude, wanda, sparsegpt)          -> clustering_characterization/
    hamming multi x 4, hamming seeds, scan       -> analysis_results/, results/
    hamming report                               -> report/
    sae train, sae eval, sae cluster             -> saes/, sae_clusters/
    aanet stage1, aanet select, aanet stage3     -> real_data_analysis_canonical/,
                                                    selection.csv, selected_clusters_canonical/
    review                                       -> review/index.html

:data:`FULL` is what ``make demo`` runs (about 15 minutes on 2 CPU cores); :data:`QUICK`
(``--quick``, ``make demo-quick``) runs every stage for real on smaller settings, in under
3 minutes on 2 cores once the model cache and corpus exist (about 2.2 minutes on a quiet
machine, about 1.1 for a rerun).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from featgeo import __version__
from featgeo.files import check_output_dir, check_writable_dir, read_json, write_json
from featgeo.progress import console

MARKER = "demo.json"
"""Written into ``--out`` at the start of a run: the settings and commands (and, at the end,
seconds per step). It marks the folder as a demo's, so that a rerun may reuse it."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo chain (every other option is the command's default)."""

    calib_samples: int
    """prune: calibration windows."""
    seqlen: int
    """prune: tokens per calibration / perplexity window."""
    eval_windows: int
    """prune: perplexity windows of the eval split."""
    layers: str | None
    """prune: decoder layers pruned (None: all 30); hamming multi/seeds read layer 1."""
    n_executions: int
    """hamming multi: reference features per matrix."""
    n_features: int
    """hamming multi / seeds: nearest features analysed per reference."""
    seeds: int
    """hamming seeds: seeds 0..seeds-1."""
    k_values: str
    """hamming seeds: k-means cluster counts."""
    d_sae: int
    """sae train: latents."""
    sae_tokens: int
    """sae train: training tokens."""
    activation_tokens: int
    """sae train: tokens of activations collected (epochs repeat them)."""
    eval_tokens: int
    """sae eval: held-out tokens."""
    n_clusters: str
    """sae cluster / aanet stages: comma list of cluster counts."""
    store_tokens: int
    """sae cluster, aanet stage1 and stage3: tokens of the activation stores."""
    max_steps: int
    """aanet stage1: training steps at most."""
    early_stop_patience: int
    """aanet stage1: steps without improvement before a model stops."""
    batch_tokens: int
    """aanet stage1: store tokens drawn per step."""
    sigma_bc: float
    """aanet select: categories B / C above mu + this many sigma."""
    require_monotonic: bool
    """aanet select: keep only clusters whose loss curves fall up to their elbow (a few dozen
    steps leave most curves too rough for that filter)."""
    samples_per_vertex: int
    """aanet stage3: text records kept per vertex."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"DemoSettings.{f.name} must be positive, got {value}")


FULL = DemoSettings(
    calib_samples=32,
    seqlen=512,
    eval_windows=32,
    layers=None,
    n_executions=10,
    n_features=128,
    seeds=3,
    k_values="4,8,16",
    d_sae=2304,
    sae_tokens=400_000,
    activation_tokens=200_000,
    eval_tokens=4096,
    n_clusters="128,256",
    store_tokens=65_536,
    max_steps=200,
    early_stop_patience=50,
    batch_tokens=1024,
    sigma_bc=1.0,
    require_monotonic=True,
    samples_per_vertex=50,
)
"""``make demo``: the README's numbers come from these settings."""

QUICK = DemoSettings(
    calib_samples=8,
    seqlen=128,
    eval_windows=8,
    layers="0-3",
    n_executions=3,
    n_features=64,
    seeds=2,
    k_values="4,8",
    d_sae=1152,
    sae_tokens=96_000,
    activation_tokens=48_000,
    eval_tokens=512,
    n_clusters="32",
    store_tokens=16_384,
    max_steps=60,
    early_stop_patience=20,
    batch_tokens=512,
    sigma_bc=1.0,
    require_monotonic=False,
    samples_per_vertex=10,
)
"""``featgeo demo --quick``: every stage, small enough for under 3 minutes on 2 CPU cores."""


@dataclass(frozen=True)
class DemoStep:
    """One ``featgeo`` command of the demo."""

    name: str
    """The command path (``hamming multi``); ``--until`` / ``--skip`` take these."""
    title: str
    """One line: what the step shows."""
    args: tuple[str, ...]
    """Exactly what one would type after ``featgeo``."""
    output: Path
    """The file or folder the step writes."""
    holds: str
    """What that output holds, for the closing summary."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment variables the step runs with (added to the caller's)."""

    def command_line(self) -> str:
        """The step as a shell command line."""
        return shlex.join(["featgeo", *self.args])


@dataclass(frozen=True)
class StepResult:
    """How one step ran."""

    step: DemoStep
    seconds: float


class DemoStepFailed(RuntimeError):
    """A step exited non-zero; the chain stops there."""

    def __init__(self, step: DemoStep, index: int, total: int, returncode: int):
        self.step, self.index, self.total = step, index, total
        # A step killed by signal N (negative return code) exits as a shell reports it.
        self.exit_code = returncode if returncode > 0 else 128 - returncode
        how = f"exit code {returncode}" if returncode > 0 else f"signal {-returncode}"
        super().__init__(
            f"demo step {index}/{total} '{step.name}' failed with {how} (its own message is "
            "above); the steps after it did not run, and running the demo again resumes"
        )


def settings_for(quick: bool) -> DemoSettings:
    return QUICK if quick else FULL


def demo_steps(out: Path, quick: bool) -> list[DemoStep]:
    """The demo chain writing under ``out``: :data:`QUICK` settings or :data:`FULL` ones."""
    s = settings_for(quick)
    out = Path(out)
    mats = out / "clustering_characterization"
    results = out / "analysis_results"
    seeds_root = out / "results" / "metrics" / "multi_seed_clustering"
    scan = out / "results" / "scan"
    report = out / "report"
    sae = out / "saes" / "layer6-demo"
    sae_eval = out / "saes" / "layer6-demo-eval.json"
    clusters = out / "sae_clusters"
    stage1 = out / "real_data_analysis_canonical"
    selection = out / "selection.csv"
    stage3 = out / "selected_clusters_canonical"
    # Stage 2's criteria, also given to the review site so that it shows the same categories.
    # The demo's few clusters have no 3-sigma outliers: categories B and C use mu + sigma_bc.
    criteria = {"sigma_bc": s.sigma_bc, "require_monotonic": s.require_monotonic}

    steps = [
        DemoStep(
            "prune",
            "prune SmolLM2-135M at 50% with magnitude, Wanda and SparseGPT; perplexities",
            _command(
                "prune",
                model="embedded",
                method="magnitude,wanda,sparsegpt",
                sparsity=0.5,
                calib_samples=s.calib_samples,
                seqlen=s.seqlen,
                eval_windows=s.eval_windows,
                layers=s.layers,
                out=mats,
            ),
            mats,
            "the pruned matrices, {method}/layer{L}-{component}.pt, and each run's perplexity",
        )
    ]
    for method in ("wanda", "sparsegpt"):
        for component in ("mlp.down_proj", "mlp.up_proj"):
            steps.append(
                DemoStep(
                    "hamming multi",
                    f"k-means of the masks of {method} layer 1 {component}: separation ratios",
                    _command(
                        "hamming",
                        "multi",
                        mats / method / f"layer1-{component}.pt",
                        n_executions=s.n_executions,
                        n_features=s.n_features,
                        output_json=results / f"{method}_layer1_{component}.json",
                    ),
                    results,
                    "one `hamming multi` JSON per matrix (clusters, distances, block coherence)",
                )
            )
    steps += [
        DemoStep(
            "hamming seeds",
            "the same analysis over seeds and k: heatmaps and a summary",
            _command(
                "hamming",
                "seeds",
                method="wanda",
                layer=1,
                component="mlp.down_proj",
                seeds=s.seeds,
                n_similar=s.n_features,
                k_values=s.k_values,
                matrices_dir=mats,
                output_dir=seeds_root / "wanda" / "mlp.down_proj",
            ),
            seeds_root,
            "per seed and k the cluster plots; summary/ heatmaps and metrics_summary.json",
        ),
        DemoStep(
            "hamming scan",
            "block coherence and nearest-neighbour Hamming distance of every pruned matrix",
            _command("hamming", "scan", matrices_dir=mats, methods="wanda,sparsegpt", out=scan),
            scan,
            "scan.csv (one row per matrix) and heatmaps per method",
        ),
        DemoStep(
            "hamming report",
            "the comparative sparsity-pattern report",
            _command(
                "hamming",
                "report",
                results_dir=results,
                out=report,
                seeds_dir=seeds_root,
                scan_csv=scan / "scan.csv",
            ),
            report,
            "report.md and a self-contained report.html",
        ),
        DemoStep(
            "sae train",
            f"a TopK SAE ({s.d_sae} latents, k = 32) on block 6 of SmolLM2",
            _command(
                "sae",
                "train",
                layer=6,
                d_sae=s.d_sae,
                k=32,
                tokens=s.sae_tokens,
                activation_tokens=s.activation_tokens,
                out=sae,
            ),
            sae,
            "the SAE in SAELens format (cfg.json, sae_weights.safetensors) and training.json",
        ),
        DemoStep(
            "sae eval",
            "variance explained and CE loss recovered on held-out text",
            _command("sae", "eval", sae, tokens=s.eval_tokens, json=sae_eval),
            sae_eval,
            "the SAE's evaluation: variance explained, L0, CE loss recovered, dead latents",
        ),
        DemoStep(
            "sae cluster",
            f"k-means clusters of the SAE's decoder directions (n = {s.n_clusters})",
            _command(
                "sae",
                "cluster",
                sae,
                n_clusters=s.n_clusters,
                method="kmeans",
                store_tokens=s.store_tokens,
                out=clusters,
            ),
            clusters,
            "clusters_{n}/: the latent clusters and their ranks",
        ),
        DemoStep(
            "aanet stage1",
            "Stage 1: an AANet per (cluster, k = 2..8), elbows and plots",
            _command(
                "aanet",
                "stage1",
                sae=sae,
                n_clusters=s.n_clusters,
                clusters_dir=clusters,
                store_tokens=s.store_tokens,
                max_steps=s.max_steps,
                early_stop_patience=s.early_stop_patience,
                batch_tokens=s.batch_tokens,
                save_dir=stage1,
            ),
            stage1,
            "clusters_{n}/: the consolidated CSV, training curves, models and plots",
            # One thread: the stacks are many small matmuls, where a second thread costs more
            # than it adds (the workers run side by side, one per core).
            {"OMP_NUM_THREADS": "1"},
        ),
        DemoStep(
            "aanet select",
            "Stage 2: quality filters and categories A/B/C/D",
            _command(
                "aanet",
                "select",
                csv_dir=stage1,
                n_clusters_list=s.n_clusters,
                **criteria,
                out=selection,
            ),
            selection,
            "the selected clusters, their category and refit k",
        ),
        DemoStep(
            "aanet stage3",
            "Stage 3 (MODE 2): the selected clusters' models and text near each vertex",
            _command(
                "aanet",
                "stage3",
                csv_dir=stage1,
                n_clusters_list=s.n_clusters,
                selection=selection,
                skip_training=True,
                store_tokens=s.store_tokens,
                samples_per_vertex=s.samples_per_vertex,
                save_dir=stage3,
            ),
            stage3,
            "n{n}/: per selected cluster its model and vertex samples (JSONL)",
        ),
        DemoStep(
            "review",
            "the review site: every stage's results on one page",
            _command(
                "review",
                stage1_dir=stage1,
                stage3_dir=stage3,
                sparsity_report=report,
                **criteria,
                out=out / "review",
            ),
            out / "review",
            "the review site: open index.html in a browser",
        ),
    ]
    return steps


def _command(*words: str | Path, **options: str | int | float | bool | Path | None) -> tuple:
    """``words``, then ``--name value`` per option in order (``n_clusters`` -> ``--n-clusters``):
    True is the flag alone, False ``--no-name``, None leaves the option out."""
    args = [str(word) for word in words]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, float):
            args += [flag, f"{value:g}"]
        else:
            args += [flag, str(value)]
    return tuple(args)


def step_names(steps: Sequence[DemoStep]) -> list[str]:
    """The distinct step names, in order."""
    return list(dict.fromkeys(step.name for step in steps))


def select_steps(
    steps: Sequence[DemoStep], *, until: str | None = None, skip: str | None = None
) -> list[DemoStep]:
    """The steps up to the last one named ``until``, without those named in ``skip`` (a comma
    list). Names are command paths (``aanet stage1``); ``aanet-stage1`` is accepted too."""
    names = step_names(steps)

    def check(option: str, value: str) -> str:
        name = " ".join(value.replace("-", " ").lower().split())
        if name not in names:
            raise ValueError(
                f"{option} '{value}' is not a step of the demo; expected one of: "
                + ", ".join(names)
            )
        return name

    chosen = list(steps)
    if until is not None:
        last = check("--until", until)
        end = max(i for i, step in enumerate(chosen) if step.name == last)
        chosen = chosen[: end + 1]
    if skip:
        skipped = {check("--skip", part) for part in skip.split(",") if part.strip()}
        chosen = [step for step in chosen if step.name not in skipped]
    if not chosen:
        raise ValueError(
            "--until and --skip leave no step to run; skip fewer steps (the steps: "
            + ", ".join(names) + ")"
        )
    return chosen


def check_out(out: Path, quick: bool, steps: Sequence[DemoStep]) -> None:
    """Refuse, before any step runs, an ``--out`` that is a file, lies under one, holds someone
    else's files, or holds the other chain's demo (whose runs would refuse these settings)."""
    signature = (MARKER, *sorted({str(step.output.relative_to(out)) for step in steps}))
    try:
        check_output_dir(out, "--out", signature=signature)
    except FileExistsError:
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise FileExistsError(
            f"--out '{out}' already holds files that no demo wrote there ({shown}); pass a new "
            "or empty folder, or the --out of an earlier demo"
        ) from None
    check_writable_dir(out, "--out")
    marker = out / MARKER
    if marker.is_file():
        try:
            was_quick = read_json(marker).get("quick")
        except (ValueError, AttributeError):
            raise ValueError(
                f"--out '{out}': {marker} is not a demo's JSON; pass another --out or delete "
                "that file"
            ) from None
        if was_quick is not None and bool(was_quick) != quick:
            kind = "a --quick demo" if was_quick else "a full demo"
            raise FileExistsError(
                f"--out '{out}' holds {kind}, with other settings; pass another --out "
                f"({'demo_quick' if quick else 'demo_out'} is the default) or delete it"
            )


def run_demo(
    out: Path,
    *,
    quick: bool,
    until: str | None = None,
    skip: str | None = None,
    dry_run: bool = False,
) -> list[StepResult]:
    """Run the demo chain under ``out``, one ``featgeo`` subprocess per step.

    Raises:
        ValueError, FileExistsError, NotADirectoryError: a bad ``--out``, ``until`` or ``skip``
            (before any step runs).
        DemoStepFailed: a step exited non-zero; the steps after it did not run.
    """
    out = Path(out)
    steps = select_steps(demo_steps(out, quick), until=until, skip=skip)
    if dry_run:
        for step in steps:
            env = "".join(f"{k}={shlex.quote(v)} " for k, v in step.env.items())
            console.print(
                f"# {step.title}\n{env}{step.command_line()}", soft_wrap=True, highlight=False
            )
        return []
    check_out(out, quick, demo_steps(out, quick))
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "featgeo_version": __version__,
        "quick": quick,
        "settings": dataclasses.asdict(settings_for(quick)),
        "steps": [{"name": step.name, "command": step.command_line()} for step in steps],
    }
    write_json(out / MARKER, record)
    results = []
    start = time.perf_counter()
    for index, step in enumerate(steps, 1):
        results.append(_run_step(step, index, len(steps)))
    record["seconds"] = {"total": round(time.perf_counter() - start, 1)}
    record["steps"] = [
        {"name": r.step.name, "command": r.step.command_line(), "seconds": round(r.seconds, 1)}
        for r in results
    ]
    write_json(out / MARKER, record)
    return results


def _run_step(step: DemoStep, index: int, total: int) -> StepResult:
    console.rule(f"[{index}/{total}] {step.name}: {step.title}", style="bold")
    env_words = "".join(f"{k}={v} " for k, v in step.env.items())
    console.print(f"$ {env_words}{step.command_line()}", soft_wrap=True, highlight=False)
    sys.stdout.flush()
    env = {**os.environ, **step.env}
    began = time.perf_counter()
    code = _run([sys.executable, "-m", "featgeo", *step.args], env)
    seconds = time.perf_counter() - began
    if code != 0:
        raise DemoStepFailed(step, index, total, code)
    console.print(f"[{index}/{total}] {step.name} done in {seconds:.1f} s", highlight=False)
    return StepResult(step, seconds)


def _run(command: list[str], env: dict[str, str]) -> int:
    """Run one step; its exit code. On Ctrl-C the step (which got the same SIGINT) is left to
    stop on its own, saving what it can, rather than killed as ``subprocess.call`` would."""
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise


def print_summary(out: Path, results: Sequence[StepResult]) -> None:
    """Seconds per step, where each output lies and what it holds, and how to open the review."""
    if not results:
        return
    console.rule("demo finished", style="bold")
    total = sum(r.seconds for r in results)
    per_name: dict[str, float] = {}
    for r in results:
        per_name[r.step.name] = per_name.get(r.step.name, 0.0) + r.seconds
    console.print(
        "seconds per step: "
        + ", ".join(f"{name} {sec:.0f}" for name, sec in per_name.items())
        + f"; total {total:.0f} s ({total / 60:.1f} min)",
        soft_wrap=True,
        highlight=False,
    )
    console.print("outputs:", highlight=False)
    shown: set[Path] = set()
    for r in results:
        output = r.step.output
        if output in shown or not r.step.holds or not output.exists():
            continue
        shown.add(output)
        suffix = "/" if output.is_dir() else ""
        console.print(f"  {output}{suffix}  {r.step.holds}", soft_wrap=True, highlight=False)
    index = (out / "review" / "index.html").resolve()
    if index.is_file():
        console.print(
            f"open the review site in a browser: {index.as_uri()}\n"
            f"  (or: xdg-open {shlex.quote(str(index))})",
            soft_wrap=True,
            highlight=False,
        )
