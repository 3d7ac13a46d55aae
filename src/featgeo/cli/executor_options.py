"""``--executor`` and ``--ray-address``, shared by the commands whose units can run on Ray
(``featgeo aanet stage1``, ``aanet stage3``, ``hamming scan``; :mod:`featgeo.executors`)."""

from __future__ import annotations

import typer

EXECUTOR = typer.Option(
    "local",
    "--executor",
    help="Where the units run: local (this machine) or ray (a Ray cluster; needs "
    "pip install 'featgeo\\[ray]'). The files are the same.",
)
RAY_ADDRESS = typer.Option(
    None,
    "--ray-address",
    help="With --executor ray: auto (RAY_ADDRESS, else the cluster `ray start` started on this "
    "machine; the default) or HOST:PORT of the Ray head.",
)
