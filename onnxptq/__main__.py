"""``python -m onnxptq``: the command line (same as the ``onnxptq`` script)."""
import sys

from .cli import main

sys.exit(main())
