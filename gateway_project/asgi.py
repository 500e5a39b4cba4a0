import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django.setup(set_prefix=False)

from compat.limits import V1BodyLimit  # noqa: E402 (needs the settings configured above)
from core.asgi import GatewayASGIHandler  # noqa: E402

# /v1/ bodies over V1_MAX_BODY_BYTES are refused before Django's handler reads them whole.
# (The two spell the ASGI callable's types a little differently; both are plain ASGI 3 apps.)
application = V1BodyLimit(GatewayASGIHandler())  # type: ignore[arg-type]
