"""AANets for every (latent cluster, k): the engine Stage 1 runs (SPEC §3, seed 002).

    from featgeo.archetypes.engine import train_cluster_aanets
    from featgeo.archetypes.data import clusters_data, read_clusters

    datas = clusters_data(sae, store, read_clusters("runs/clusters/clusters_128"))
    results = train_cluster_aanets(datas, store.n_tokens, ks=range(2, 9))

Every cluster gets one set of k_max diffusion extrema (sliced to the first k per model), every
model is trained in stacks by :func:`featgeo.archetypes.batched.train_stack`, and a model whose
cluster has fewer than k + ``MIN_POINTS_EXTRA`` active tokens is not trained: it is returned with
status ``too_few_points`` and NaN losses. Seeds are a function of (seed, cluster id, k) only, so a
model trains the same whichever clusters are trained with it (exactly in float64; in float32 to
rounding, as padded matmuls sum in another order), and a resumed run reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from featgeo.archetypes.aanet import AANet
from featgeo.archetypes.batched import LOSS_NAMES, AANetFit, ModelSpec, check_device, train_stack
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.criteria import DEFAULT_CRITERION, KChoice, inside_fraction, select_k
from featgeo.archetypes.data import ClusterData, has_enough_points
from featgeo.archetypes.sources import ClusterBatches, cluster_extrema

STATUSES = ("ok", "too_few_points", "diverged")


@dataclass
class ClusterFit:
    """One (cluster, k) model: its status and, when trained, what training produced."""

    cluster_id: int
    k: int
    status: str
    """``ok``; ``too_few_points`` (not trained: fewer than k + MIN_POINTS_EXTRA tokens);
    ``diverged`` (a loss became NaN or infinite: lower the learning rate)."""
    n_active: int
    fit: AANetFit | None = None
    extrema: np.ndarray | None = None
    """float32 [k, D] the diffusion extrema the model was anchored to (its data coordinates)."""
    inside_fraction: float = float("nan")
    """Share of the cluster's warm-up points inside the simplex of its first k extrema
    (:func:`featgeo.archetypes.criteria.inside_fraction`); NaN when not trained."""

    @property
    def final(self) -> dict[str, float]:
        """Median of the last step losses per :data:`LOSS_NAMES`; NaN when not trained."""
        if self.fit is None:
            return {name: float("nan") for name in LOSS_NAMES}
        return self.fit.final


def model_seed(seed: int, cluster_id: int, k: int) -> int:
    """The seed of model (cluster, k): distinct per model, independent of the other models."""
    return (int(seed) * 1_000_003 + int(cluster_id) * 64 + int(k)) % (2**31 - 1)


def _check_config(config) -> AANetConfig:
    if config is None:
        return AANetConfig()
    if not isinstance(config, AANetConfig):
        raise TypeError(f"config must be an AANetConfig, got {type(config).__name__}")
    return config


def check_ks(ks: Sequence[int]) -> list[int]:
    """Validated k values: distinct ints >= 2, ascending. Raises ValueError naming the fix."""
    if isinstance(ks, str) or not all(
        isinstance(k, int | np.integer) and not isinstance(k, bool) for k in ks
    ):
        raise ValueError(f"ks must be integers >= 2, got {ks!r}")
    values = sorted({int(k) for k in ks})
    if not values or values[0] < 2:
        raise ValueError(f"every k must be >= 2 (an AANet needs two archetypes), got {ks!r}")
    if values[-1] > 64:
        raise ValueError(f"k must be at most 64, got {values[-1]}")
    return values


def k_range(k_min: int, k_max: int) -> list[int]:
    """``k_min..k_max`` inclusive, with a clear error when the range is empty or k_min < 2."""
    for name, value in (("k_min", k_min), ("k_max", k_max)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if k_min < 2:
        raise ValueError(f"k_min must be >= 2 (an AANet needs two archetypes), got {k_min}")
    if k_min > k_max:
        raise ValueError(f"k_min ({k_min}) must be <= k_max ({k_max}); swap them")
    if k_max > 64:
        raise ValueError(f"k_max must be at most 64, got {k_max}")
    return list(range(k_min, k_max + 1))


def auto_models_per_stack(device: str | torch.device) -> int:
    """Stack size that measured fastest: on CPU padding every cluster's batch to the largest one
    costs more than a stack saves beyond a few clusters (28 models: 4 clusters x 7 k); on CUDA
    each step's launches dominate, so stacks are as large as memory comfortably allows."""
    return 4096 if torch.device(device).type == "cuda" else 28


def train_cluster_aanets(
    datas: Sequence[ClusterData],
    n_tokens: int,
    *,
    ks: Sequence[int] = range(2, 9),
    config: AANetConfig | None = None,
    batch_tokens: int = 4096,
    knn: int = 150,
    max_warmup: int = 1000,
    device: str | torch.device = "cpu",
    models_per_stack: int | Literal["auto"] | None = "auto",
    dtype: torch.dtype = torch.float32,
    on_step: Callable[[int, int], None] | None = None,
    on_stack_done: Callable[[list[ClusterFit]], None] | None = None,
) -> list[ClusterFit]:
    """Train an AANet for every (cluster, k) and return them cluster by cluster, k ascending.

    Args:
        datas: the clusters' training data (:func:`featgeo.archetypes.data.clusters_data`).
        n_tokens: tokens of the store the data was read from (the per-step draw).
        ks: the numbers of archetypes (SPEC §3: 2..8).
        config: training hyper-parameters (:class:`AANetConfig`; its seed seeds everything).
        batch_tokens: token positions drawn per step; a cluster trains on its active ones.
        knn, max_warmup: diffusion-extrema graph (SPEC §3: 150 neighbours, 1000 points).
        device: where the stacks train; dtype: their compute precision.
        models_per_stack: at most this many models per stack (clusters sorted by their number
            of active tokens, so stack-mates need similar padding; a stack holds at least one
            cluster's models); None = one stack; "auto" = :func:`auto_models_per_stack`.
        on_step: ``(step, n_models_training)`` after every step of every stack.
        on_stack_done: called with the finished :class:`ClusterFit` of each stack (checkpoints).

    Raises:
        ValueError: bad ``ks`` or sizes. Clusters with too few points are not an error.
    """
    ks = check_ks(ks)
    config = _check_config(config)
    device = check_device(device)
    if models_per_stack not in (None, "auto") and (
        isinstance(models_per_stack, bool)
        or not isinstance(models_per_stack, int)
        or models_per_stack < 1
    ):
        raise ValueError(
            f"models_per_stack must be a positive int, None or 'auto', got {models_per_stack!r}"
        )
    k_max = ks[-1]
    for name, value, low in (("knn", knn, 1), ("max_warmup", max_warmup, k_max)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an int >= {low} (k_max={k_max}), got {value!r}")
    results: dict[tuple[int, int], ClusterFit] = {}
    trainable: list[int] = []
    for i, data in enumerate(datas):
        for k in ks:
            if not has_enough_points(data.n_active, k):
                results[(i, k)] = ClusterFit(data.cluster_id, k, "too_few_points", data.n_active)
        if has_enough_points(data.n_active, ks[0]):
            trainable.append(i)
    order = sorted(trainable, key=lambda i: (datas[i].n_active, i))
    if models_per_stack == "auto":
        models_per_stack = auto_models_per_stack(device)
    per_cluster = len(ks)
    clusters_per_stack = (
        max(1, len(order)) if models_per_stack is None else max(1, models_per_stack // per_cluster)
    )
    opts = dict(
        batch_tokens=batch_tokens,
        knn=knn,
        max_warmup=max_warmup,
        device=device,
        dtype=dtype,
        on_step=on_step,
    )
    for start in range(0, len(order), clusters_per_stack):
        group = order[start : start + clusters_per_stack]
        done = _train_group([datas[i] for i in group], n_tokens, ks, k_max, config, opts)
        for j, k, result in done:
            results[(group[j], k)] = result
        if on_stack_done is not None:
            on_stack_done([result for _, _, result in done])
    return [results[(i, k)] for i in range(len(datas)) for k in ks]


def _train_group(datas, n_tokens, ks, k_max, config, opts) -> list[tuple[int, int, ClusterFit]]:
    """Train one stack; returns ``(index in datas, k, result)`` per model."""
    extrema, warmups = [], []
    for d in datas:
        points, anchors = cluster_extrema(
            d,
            min(k_max, d.n_active),
            knn=opts["knn"],
            max_points=opts["max_warmup"],
            seed=config.seed,
            return_points=True,
        )
        extrema.append(anchors)
        warmups.append(points)
    source = ClusterBatches(
        datas, extrema, n_tokens, batch_tokens=opts["batch_tokens"], seed=config.seed
    )
    specs = [
        ModelSpec(k, j, model_seed(config.seed, d.cluster_id, k))
        for j, d in enumerate(datas)
        for k in ks
        if has_enough_points(d.n_active, k)
    ]
    fits = train_stack(
        specs, source, config, device=opts["device"], dtype=opts["dtype"], on_step=opts["on_step"]
    )
    out = []
    for fit in fits:
        j, k = fit.spec.data, fit.spec.k
        d = datas[j]
        inside = inside_fraction(warmups[j], extrema[j][:k])
        status = "ok" if np.isfinite(fit.curve).all() else "diverged"
        result = ClusterFit(d.cluster_id, k, status, d.n_active, fit, extrema[j][:k], inside)
        out.append((j, k, result))
    return out


def choose_k(results: Sequence[ClusterFit], criterion: str = DEFAULT_CRITERION) -> KChoice:
    """The number of archetypes of one cluster from its models (one per k) by ``criterion``
    (:mod:`featgeo.archetypes.criteria`); k None when a model was not trained."""
    results = sorted(results, key=lambda r: r.k)
    return select_k(
        [r.final["recon"] for r in results],
        [r.final["archetypal"] for r in results],
        [r.k for r in results],
        criterion,
        inside=[r.inside_fraction for r in results],
    )


def to_aanet(result: ClusterFit, data: ClusterData, config: AANetConfig) -> AANet:
    """The trained model of ``result`` as an :class:`AANet` estimator in d_model coordinates
    (its ``basis_`` maps inputs into the cluster's subspace when it trained there)."""
    config = _check_config(config)
    if result.fit is None:
        raise ValueError(
            f"cluster {result.cluster_id} k={result.k} was not trained ({result.status})"
        )
    net = AANet(k=result.k, config=config, space=data.space)
    extrema = data.to_model_space(np.asarray(result.extrema))
    net._set_fitted(
        result.fit.params,
        data.basis,
        extrema,
        result.fit.curve,
        result.fit.stop_reason,
        config,
        data.d_model,
    )
    return net


__all__ = [
    "STATUSES",
    "auto_models_per_stack",
    "ClusterFit",
    "check_ks",
    "choose_k",
    "k_range",
    "model_seed",
    "to_aanet",
    "train_cluster_aanets",
]
