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
    """Architecture, layer count and the addressable linear components of a model."""
    from featgeo.models import load_model, model_info

    described = model_info(load_model(model))
    name = "SmolLM2-135M-Instruct (embedded)" if model == "embedded" else model
    table = Table(title=f"{name}: {described.architecture}", show_header=False)
    rows = [
        ("layers", described.n_layers),
        ("hidden size", described.hidden_size),
        ("MLP size", described.intermediate_size),
        ("attention heads / KV heads", f"{described.n_heads} / {described.n_kv_heads}"),
        ("vocabulary", described.vocab_size),
        ("parameters", f"{described.n_parameters:,} ({described.n_parameters / 1e6:.1f}M)"),
        ("tied embeddings", described.tied_embeddings),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table, soft_wrap=True)
    comps = Table(title="linear components per layer (nn.Linear out x in)")
    comps.add_column("component")
    comps.add_column("shape", justify="right")
    for name, shape in described.components.items():
        comps.add_row(name, f"{shape[0]} x {shape[1]}")
    console.print(comps)
