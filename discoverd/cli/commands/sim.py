"""``discoverd sim``: one seed of the deterministic cluster simulator."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--seed", type=int, default=1, show_default=True, help="The seed to run.")
@click.option("--trace", is_flag=True, help="Print every event of the run.")
def sim(seed: int, trace: bool) -> None:
    """Run one seed of the deterministic cluster simulator (faults, crashes, clients)."""
    from discoverd.testing.sim import SimFailure, SimOptions, run_seed

    click.echo(SimOptions.swarm(seed).describe())
    try:
        result = run_seed(seed, trace=click.echo if trace else None)
    except SimFailure as e:
        click.echo(f"FAILED: {e}", err=True)
        sys.exit(1)
    click.echo(result.summary())
