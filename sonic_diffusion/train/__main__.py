"""`python -m sonic_diffusion.train ...`: makes comfy importable, then runs the CLI."""
import sys

from sonic_diffusion import host

# Before any comfy import: model_management probes the GPU at import time.
host.bootstrap()

from sonic_diffusion.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
