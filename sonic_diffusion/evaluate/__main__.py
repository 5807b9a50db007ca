"""`python -m sonic_diffusion.evaluate ...` (ComfyUI is booted only for --generate)."""
import sys

from sonic_diffusion.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
