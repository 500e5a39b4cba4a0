"""What the tests share that is not a fixture: factories, processes, polling, metrics, receivers.

Fixtures are in ``tests/conftest.py`` and stay thin; the code they call lives here, so that test
modules import helpers from this package and never from one another.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
