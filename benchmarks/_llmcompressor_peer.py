"""Peer side of benchmarks/prune.py: the same pruning job done by llm-compressor.

Runs in its own virtual environment (llm-compressor pins its own transformers), so it is a
separate script that benchmarks/prune.py starts as a subprocess:

    PEER_PYTHON prune_peer.py MODEL_DIR CALIB.pt METHOD NM OUT_DIR

It reads the exact calibration windows featgeo used, prunes every decoder linear layer with
llm-compressor's WandaPruningModifier or SparseGPTModifier (sequential pipeline), times the
oneshot call, and writes the pruned matrices plus a JSON line with the seconds.
"""

import json
import sys
import time
from pathlib import Path

import torch


def main(model_dir: str, calib_path: str, method: str, nm: str, out_dir: str) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from transformers import AutoModelForCausalLM

    calib = torch.load(calib_path, weights_only=True)  # [samples, seqlen]
    dataset = Dataset.from_dict(
        {"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()}
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    modifier_cls = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[method]
    structure = "0:0" if nm == "none" else nm
    modifier = modifier_cls(
        # A bare "lm_head" does not match in llm-compressor 0.14 (its log said "Sparsifying
        # lm_head"); the regex form does.
        sparsity=0.5, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"]
    )
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=[modifier],
        num_calibration_samples=calib.shape[0],
        max_seq_length=calib.shape[1],
        shuffle_calibration_samples=False,
        pipeline="sequential",
    )
    seconds = time.perf_counter() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    torch.save(weights, out / "weights.pt")
    print(json.dumps({"peer": "llm-compressor", "method": method, "nm": nm, "seconds": seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:])
