"""The loopback webhook receiver, where bench/webhook_delivery.py imports it from.

It lives in tests/support/receivers.py, which the tests import.
"""

from tests.support.receivers import HANG, Received, Receiver, Reply

__all__ = ["HANG", "Received", "Receiver", "Reply"]
