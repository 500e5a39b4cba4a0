import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django.setup(set_prefix=False)

from core.asgi import GatewayASGIHandler  # noqa: E402

application = GatewayASGIHandler()
