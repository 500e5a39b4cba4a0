import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django.setup(set_prefix=False)

from compat.limits import V1BodyLimit  # noqa: E402
from core.asgi import GatewayASGIHandler  # noqa: E402
from core.asgi_body import DrainUnreadBody  # noqa: E402

# /v1/ bodies over V1_MAX_BODY_BYTES (and others over REQUEST_MAX_BYTES, in core.asgi) are refused
# before Django's ASGI handler reads them whole; what a refusal leaves unread is drained before the
# connection closes, so the client reads the 413 rather than a reset.
application = DrainUnreadBody(V1BodyLimit(GatewayASGIHandler()))
