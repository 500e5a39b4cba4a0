from __future__ import annotations

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets the page fixture take a screenshot of the moment a browser test failed.
    report = yield
    if report.when == "call":
        item.browser_call_failed = report.failed
    return report
