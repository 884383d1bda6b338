"""``python -m lambda_otel``: run the extension (what the layer's launcher starts)."""

import logging
import os

from .app import main

if __name__ == "__main__":
    code = main()
    logging.shutdown()
    # os._exit: no stray non-daemon thread (ours or a library's) may delay the exit Lambda waits for.
    os._exit(code)
