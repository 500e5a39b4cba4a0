import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django.setup(set_prefix=False)

from compat.limits import V1BodyLimit  # noqa: E402
from core.asgi import GatewayASGIHandler  # noqa: E402

# /v1/ bodies over V1_MAX_BODY_BYTES are refused before Django's ASGI handler reads them whole.
application = V1BodyLimit(GatewayASGIHandler())
