"""``python -m examples.reports``: the example application, served like ``python -m api``."""

from api.__main__ import serve
from examples.reports.app import build

if __name__ == "__main__":
    serve(build)
