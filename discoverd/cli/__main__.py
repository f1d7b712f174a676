"""``discoverd`` — entry point and global options; one module per verb family."""

from __future__ import annotations

import sys

import click

from discoverd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="discoverd")
def cli() -> None:
    """Service discovery and shared configuration on a Raft-replicated key-value store."""


@cli.command()
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
