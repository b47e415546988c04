"""The `causalmeta` command line."""
import typer

app = typer.Typer(help="causalmeta: amortized causal inference benchmarks", no_args_is_help=True)


def main() -> None:
    app()
