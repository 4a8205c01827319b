"""`python -m branchlora` runs the CLI (torchrun -m branchlora.cli works too)."""

from branchlora.cli import app

app()
