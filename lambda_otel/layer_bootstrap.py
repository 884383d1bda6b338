"""Start the extension from the Lambda layer.

The layer's launcher (``/opt/extensions/lambda-otel``, written by ``build_layer.sh``) runs::

    python3 -I -S -B /opt/lambda-otel/lambda_otel/layer_bootstrap.py <built-for X.Y> <launcher path>

Why a file run by path: ``-I`` ignores ``PYTHONPATH`` (the function's own path must not shadow our
dependencies) and leaves the script's folder off ``sys.path``, so this file puts the layer's code
folder (the parent of ``lambda_otel/``) first on ``sys.path`` itself, then calls
``lambda_otel.app.run_process``, as ``python -m lambda_otel`` does (one start-up and exit path,
whichever way the extension is launched). A plain import, not ``runpy``: ``runpy`` and the
``pkgutil`` it imports would add a few ms before the first ``/next``.

It also checks the interpreter: the layer's bytecode and compiled modules are for one Python minor
version. Another version still works (pure-Python fallbacks) but recompiles everything from source
on every cold start, since ``/opt`` is read-only; so we say so on stderr. Kept to syntax any Python 3
parses, so that an old interpreter reaches the clear message instead of a SyntaxError.
"""
import os
import sys

MIN_PYTHON = (3, 10)


def _prepare(argv):
    """Check the interpreter, fix sys.path and sys.argv; return an exit code or None to go on."""
    built_for = argv[1] if len(argv) > 1 else ""
    running = "%d.%d" % sys.version_info[:2]
    if sys.version_info[:2] < MIN_PYTHON:
        sys.stderr.write(
            "lambda-otel: error: Python %s is too old (needs %d.%d+); this layer was built for Python %s.\n"
            % (running, MIN_PYTHON[0], MIN_PYTHON[1], built_for or "?"))
        return 1
    if built_for and running != built_for:
        sys.stderr.write(
            "lambda-otel: warning: the layer was built for Python %s but python3 is %s: its bytecode is "
            "ignored and every cold start compiles from source. Build the layer with --python %s.\n"
            % (built_for, running, running))
    code_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, code_root)
    # The extension falls back to argv[0]'s basename for its name: make that the launcher.
    sys.argv = [argv[2] if len(argv) > 2 else argv[0]]
    return None


def main():
    code = _prepare(sys.argv)
    if code is not None:
        return code
    from lambda_otel.app import run_process

    run_process()  # exits the process itself (os._exit) once the extension is done
    return 0


if __name__ == "__main__":
    sys.exit(main())
