import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django_application = get_asgi_application()

from compat.limits import V1BodyLimit  # noqa: E402 (needs the settings configured above)

# /v1/ bodies over V1_MAX_BODY_BYTES are refused before Django's handler reads them whole.
application = V1BodyLimit(django_application)
