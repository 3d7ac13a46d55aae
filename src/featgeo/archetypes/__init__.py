"""Archetypal analysis networks (AANets) over SAE latent clusters (SPEC §3, seed 002).

- :class:`AANet`: one network as a scikit-learn-style estimator (fit / transform /
  ``archetypes_`` / save / load).
- :func:`train_stack`: many independent AANets trained as one stacked tensor program.
- :func:`train_cluster_aanets`: every (cluster, k) of an activation store, the Stage 1 engine.
- :func:`diffusion_extrema`, :func:`elbow`, :func:`select_k`: anchors, elbow metrics and the
  k-selection criteria (``docs/archetypes.md`` measures them).

    from featgeo.archetypes import AANet

    net = AANet(k=4).fit(X)       # X [n, d]
    weights = net.transform(X)    # [n, 4] barycentric coordinates
"""

from featgeo.archetypes.aanet import AANet, NotFittedError
from featgeo.archetypes.batched import AANetFit, ModelSpec, train_stack
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.criteria import CRITERIA, DEFAULT_CRITERION, KChoice, select_k
from featgeo.archetypes.data import ClusterData, clusters_data, read_clusters
from featgeo.archetypes.elbow import Elbow, elbow, elbow_table, k_differential
from featgeo.archetypes.engine import ClusterFit, k_range, to_aanet, train_cluster_aanets
from featgeo.archetypes.extrema import diffusion_extrema

__all__ = [
    "AANet",
    "AANetConfig",
    "AANetFit",
    "CRITERIA",
    "ClusterData",
    "ClusterFit",
    "DEFAULT_CRITERION",
    "Elbow",
    "KChoice",
    "ModelSpec",
    "NotFittedError",
    "clusters_data",
    "diffusion_extrema",
    "elbow",
    "elbow_table",
    "k_differential",
    "k_range",
    "read_clusters",
    "select_k",
    "to_aanet",
    "train_cluster_aanets",
    "train_stack",
]
