"""Peer side of benchmarks/prune_scale.py: the same pruning job done by llm-compressor, as a
user of llm-compressor would do it on a big model, with its memory measured.

Runs in llm-compressor's own virtual environment (it pins its own transformers), started by
prune_scale.py through benchmarks/_measure.py, one fresh process per method:

    PEER_PYTHON _llmcompressor_scale_peer.py --model DIR --calib CALIB.pt --method wanda
        --dtype float32|bfloat16|float16 --batch-size B --out OUT_DIR [--nm 2:4]

What it does is what llm-compressor's documentation recommends for models bigger than the GPU
("Big Model Quantization with Sequential Onloading", docs of 0.11+; 0.14 implements it in
``llmcompressor/pipelines/sequential/pipeline.py``): load the model on the CPU
(``from_pretrained(..., dtype=..., device_map=None)``) and call ``oneshot(...,
pipeline="sequential")``, which onloads one decoder layer at a time to the main accelerator
(``get_main_device()``: the GPU when there is one, else the CPU) while the calibration
activations are kept on the CPU between layers (``sequential_offload_device="cpu"``). The
calibration windows are exactly featgeo's (CALIB.pt, [windows, seqlen] token ids). Then it saves
the pruned model the way its examples do (``model.save_pretrained(OUT_DIR)``).

Prints one JSON line: ``{"peer": "llm-compressor", "seconds": {"load", "oneshot", "save"},
"peak_device_bytes", "peak_host_rss_bytes", ...}``. ``seconds.oneshot`` is the pruning call
alone; the device peak is ``torch.cuda.max_memory_allocated()`` over the whole process (null
on the CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model folder")
    parser.add_argument("--calib", required=True, help="featgeo's windows: [windows, seqlen]")
    parser.add_argument("--method", required=True, choices=("wanda", "sparsegpt"))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nm", default=None, help="N:M (e.g. 2:4); unstructured if absent")
    parser.add_argument("--dtype", required=True, choices=tuple(DTYPES))
    parser.add_argument("--batch-size", type=int, default=1, help="windows per micro-batch")
    parser.add_argument("--out", required=True, help="where save_pretrained writes")
    parser.add_argument("--no-save", action="store_true", help="skip save_pretrained")
    args = parser.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.utils.dev import get_main_device
    from transformers import AutoModelForCausalLM

    calib = torch.load(args.calib, weights_only=True)  # [windows, seqlen] int64
    dataset = Dataset.from_dict(
        {"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()}
    )
    t0 = time.perf_counter()
    # On the CPU, as the docs recommend for the sequential pipeline (device_map=None).
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=DTYPES[args.dtype], device_map=None
    )
    t1 = time.perf_counter()
    modifier_cls = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[args.method]
    modifier = modifier_cls(
        sparsity=args.sparsity if args.nm is None else _nm_fraction(args.nm),
        mask_structure="0:0" if args.nm is None else args.nm,
        targets=["Linear"],
        # as llm-compressor's own examples: inside the modifier, lm_head is named
        # "lm_head." (target-layer name + "."), so a plain "lm_head" does not match it
        ignore=["re:.*lm_head"],
    )
    oneshot(
        model=model,
        dataset=dataset,
        recipe=[modifier],
        num_calibration_samples=calib.shape[0],
        max_seq_length=calib.shape[1],
        shuffle_calibration_samples=False,
        batch_size=args.batch_size,
        pipeline="sequential",
        sequential_targets=["LlamaDecoderLayer"],
    )
    t2 = time.perf_counter()
    if not args.no_save:
        model.save_pretrained(args.out)
    t3 = time.perf_counter()

    cuda = torch.cuda.is_available()
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    print(
        json.dumps(
            {
                "peer": "llm-compressor",
                "method": args.method,
                "nm": args.nm,
                "dtype": args.dtype,
                "batch_size": args.batch_size,
                "main_device": str(get_main_device()),
                "seconds": {"load": t1 - t0, "oneshot": t2 - t1, "save": t3 - t2},
                "peak_device_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "sparsity": zeros / total if total else None,
                "out": None if args.no_save else str(Path(args.out).resolve()),
            }
        )
    )


def _nm_fraction(nm: str) -> float:
    n, m = (int(x) for x in nm.split(":"))
    return n / m


if __name__ == "__main__":
    main()
