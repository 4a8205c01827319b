"""`torchrun --nproc_per_node=N -m branchlora.cli run ...`."""

from branchlora.cli import app

app()
