"""``python -m lambda_otel.local``: the same as the ``lambda-otel-local`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
