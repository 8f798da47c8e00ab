"""``lmforge``: run the embedded stack and the demo."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import typer

from .demo import run_demo
from .stack import Stack

app = typer.Typer(
    help="lmforge: the embedded stack (Tansu, CPU Triton, six services) and the demo.", no_args_is_help=True
)


def _print_table(stack: Stack) -> None:
    typer.echo(f"{'component':<15} {'address':<48} log")
    for name, address, log in stack.describe():
        typer.echo(f"{name:<15} {address:<48} {log}")


@app.command()
def up(
    workdir: Path = typer.Option(Path("var/stack"), help="where databases, artifacts and logs go"),
    postgres: bool = typer.Option(False, help="PostgreSQL databases instead of SQLite files"),
    fresh: bool = typer.Option(True, help="start from an empty workdir (the broker is in-memory anyway)"),
) -> None:
    """Start everything, show what runs where, and stop cleanly on Ctrl-C."""
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    stack = Stack(workdir, postgres=postgres)
    typer.echo("starting the embedded stack ...")
    stack.start()
    _print_table(stack)
    typer.echo(f"\ngateway: {stack.gateway_url}   admin API key: {stack.admin_key}")
    typer.echo("Ctrl-C stops everything.")
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping ...")
        stack.stop()


@app.command()
def demo(
    workdir: Path = typer.Option(Path("var/demo"), help="where the demo stack keeps its state"),
    records: int = typer.Option(200, help="how many synthetic support tickets"),
) -> None:
    """Start the stack, run records -> dataset -> training -> promotion -> deployment -> answer, stop."""
    shutil.rmtree(workdir, ignore_errors=True)
    started = time.monotonic()
    typer.echo("starting the embedded stack (Tansu, CPU Triton, six services) ...")
    with Stack(workdir) as stack:
        typer.echo(f"stack ready in {time.monotonic() - started:.1f}s; gateway {stack.gateway_url}\n")
        run_demo(stack.gateway_url, stack.admin_key, say=typer.echo, records=records)
    typer.echo(f"\ndemo finished in {time.monotonic() - started:.1f}s; logs in {workdir}/logs")


if __name__ == "__main__":
    app()
