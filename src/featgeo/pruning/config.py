"""Settings of one ``featgeo prune`` run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from featgeo.models.streaming import parse_dtype
from featgeo.pruning.base import get_pruner
from featgeo.pruning.masks import TIES, Ties, parse_nm
from featgeo.pruning.sequential import ORDERS, Order

OFFLOADS = ("auto", "none", "layer")
EXPORTS = ("dense", "masks", "none")
AUTO_CALIB_TOKENS = 16384
"""Tokens per calibration micro-batch when --calib-batch-size is not given: 8 windows of 2048
(the papers' setting runs in 16 micro-batches), the whole default embedded run in one."""


@dataclass
class PruneConfig:
    """Prune the selected linear components of a causal LM, layer by layer."""

    model: str = "embedded"
    """``embedded``, a local Hugging Face folder, or a hub id (needs a reachable hub)."""
    methods: list[str] = field(default_factory=lambda: ["wanda"])
    """Pruning methods, each run from the dense model: magnitude, wanda, sparsegpt."""
    sparsity: float | None = None
    """Fraction of weights removed per matrix, in [0, 1); 0.5 unless --nm fixes it."""
    nm: str | None = None
    """Semi-structured pattern 'N:M': N of every M consecutive inputs pruned (2:4, 4:8)."""
    calib_samples: int = 32
    """Calibration windows drawn from the calibration split."""
    seqlen: int = 512
    """Tokens per calibration and evaluation window."""
    seed: int = 0
    """Seed of the calibration window offsets."""
    order: Order = "sequential"
    """Inside a decoder layer: 'sequential' fits each linear on the outputs of the already
    pruned linears before it; 'reference' fits all of them on the dense layer's inputs (one pass),
    then prunes them and recomputes the output, as locuslab/wanda does (docs/pruning.md)."""
    ties: Ties = "exact"
    """'exact': exactly k weights per selection group; 'reference': every score <= the (k+1)-th
    smallest, as the reference code (changes magnitude and SparseGPT only; docs/pruning.md)."""
    layers: str | None = None
    """Decoder layers to prune ('0-29', '0,3,5-7'); all when None."""
    components: str | None = None
    """Comma list of linear components (discovered per model, see ``featgeo model info``); all
    when None."""
    out: str = "clustering_characterization"
    """Export root: {out}/{method}/layer{L}-{component}.pt and prune_summary.json."""
    corpus: str = "embedded"
    """``embedded`` or a corpus path (see ``featgeo corpus``)."""
    eval_split: str = "eval"
    """Split used for perplexity."""
    eval_windows: int | None = 32
    """At most this many evaluation windows (None or 0: the whole split)."""
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    """Where the heavy work runs."""
    dtype: str = "auto"
    """Weights and hidden states: auto (the checkpoint's dtype on CUDA, float32 on CPU),
    float32, bfloat16 or float16. Pruning statistics are accumulated in float32 whatever it is."""
    offload: str = "auto"
    """'layer': one decoder layer on the device at a time, read from the safetensors files;
    'none': the whole model on the device; 'auto': 'layer' when the model has safetensors."""
    calib_batch_size: int | None = None
    """Calibration windows per micro-batch through a layer (statistics accumulated over all);
    None: as many windows as hold :data:`AUTO_CALIB_TOKENS` tokens."""
    export: str = "dense"
    """'dense': each pruned matrix in the model's dtype (layer{L}-{component}.pt); 'masks':
    bit-packed masks (layer{L}-{component}.mask.safetensors); 'none': no matrix files."""
    save_model: bool = False
    """Also save each pruned model as a Hugging Face folder {out}/{method}/model."""
    force: bool = False
    """Redo a method even when {out}/{method} holds a finished run with the same settings."""

    def __post_init__(self) -> None:
        parse_dtype(self.dtype)
        for name, value, choices in (
            ("offload", self.offload, OFFLOADS),
            ("export", self.export, EXPORTS),
        ):
            if value not in choices:
                raise ValueError(f"--{name} must be one of {', '.join(choices)}, got '{value}'")
        if self.calib_batch_size is not None and self.calib_batch_size < 1:
            raise ValueError(
                f"--calib-batch-size must be >= 1 (windows per micro-batch), got "
                f"{self.calib_batch_size}"
            )
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not self.methods:
            raise ValueError("--method is empty; choose from magnitude, wanda, sparsegpt")
        for method in self.methods:
            get_pruner(method)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--method lists a method twice: {','.join(self.methods)}")
        nm = parse_nm(self.nm)
        for name, value, choices in (("order", self.order, ORDERS), ("ties", self.ties, TIES)):
            if value not in choices:
                raise ValueError(f"--{name} must be one of {', '.join(choices)}, got '{value}'")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ValueError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if (
            nm is not None
            and self.sparsity is not None
            and abs(self.sparsity - nm[0] / nm[1]) > 1e-9
        ):
            raise ValueError(
                f"--sparsity {self.sparsity} contradicts --nm {self.nm} (which prunes "
                f"{nm[0]}/{nm[1]} = {nm[0] / nm[1]:g}); drop --sparsity"
            )
        for name in ("calib_samples", "seqlen"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.seqlen < 2:
            raise ValueError(f"--seqlen must be >= 2, got {self.seqlen}")
        if self.eval_windows is not None and self.eval_windows < 0:
            raise ValueError(
                f"--eval-windows must be >= 0 (0 scores the whole split), got {self.eval_windows}"
            )
        if self.eval_windows == 0:  # as on the command line: 0 means the whole split
            self.eval_windows = None

    def resolved_calib_batch_size(self) -> int:
        """Windows per micro-batch: the option, or as many as hold AUTO_CALIB_TOKENS tokens."""
        if self.calib_batch_size is not None:
            return min(self.calib_batch_size, self.calib_samples)
        return max(1, min(self.calib_samples, AUTO_CALIB_TOKENS // self.seqlen))

    @property
    def nm_pattern(self) -> tuple[int, int] | None:
        return parse_nm(self.nm)

    @property
    def target_sparsity(self) -> float:
        nm = self.nm_pattern
        if nm is not None:
            return nm[0] / nm[1]
        return 0.5 if self.sparsity is None else self.sparsity

    def to_dict(self) -> dict:
        return asdict(self)
