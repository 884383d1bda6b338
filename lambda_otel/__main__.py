"""``python -m lambda_otel``: run the extension (the layer's launcher takes the same path)."""

from .app import run_process

if __name__ == "__main__":
    run_process()
