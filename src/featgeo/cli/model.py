"""``featgeo model ...``"""

from __future__ import annotations

import typer
from rich.table import Table

from featgeo.progress import console

app = typer.Typer(help="Inspect models.", no_args_is_help=True)


@app.command("info")
def info(
    model: str = typer.Option("embedded", help="embedded, a local model folder, or a hub id."),
) -> None:
    """Architecture, layer count and the linear components discovered in each decoder layer."""
    from featgeo.models import load_model, model_info

    described = model_info(load_model(model))
    name = "SmolLM2-135M-Instruct (embedded)" if model == "embedded" else model
    table = Table(title=f"{name}: {described.architecture}", show_header=False)

    def shown(value) -> str:
        return "n/a" if value is None else str(value)

    rows = [
        ("layers", described.n_layers),
        ("hidden size", shown(described.hidden_size)),
        ("MLP size", shown(described.intermediate_size)),
        (
            "attention heads / KV heads",
            f"{shown(described.n_heads)} / {shown(described.n_kv_heads)}",
        ),
        ("vocabulary", shown(described.vocab_size)),
        ("parameters", f"{described.n_parameters:,} ({described.n_parameters / 1e6:.1f}M)"),
        ("tied embeddings", described.tied_embeddings),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table, soft_wrap=True)
    comps = Table(title="components per decoder layer (weight shape out x in)")
    comps.add_column("component")
    comps.add_column("kind")
    comps.add_column("shape", justify="right")
    comps.add_column("prunable")
    prunable = "yes" if described.prune_refusal is None else "no"
    for name, shape in described.components.items():
        comps.add_row(name, "nn.Linear", f"{shape[0]} x {shape[1]}", prunable)
    for name, shape in described.other_projections.items():
        comps.add_row(name, "Conv1D", f"{shape[0]} x {shape[1]}", "no")
    console.print(comps)
    if described.prune_refusal is not None:
        console.print(f"not prunable: {described.prune_refusal}", soft_wrap=True, highlight=False)
