"""Static files that never break a page: hashed and compressed once collected, plain until then.

Django operators often start a server after ``migrate`` without ``collectstatic``. whitenoise's
manifest storage then raises "Missing staticfiles manifest entry" for every ``{% static %}`` tag,
so ``/admin/login/`` and ``/api/docs/`` answer 500. Here a name the manifest lacks (no manifest at
all, or one collected before the file existed) gets its plain, unhashed URL instead, and whitenoise
serves those from the apps' own static directories (``WHITENOISE_USE_FINDERS``): uncompressed and
without far-future caching, but served. ``gateway.W002`` says that collectstatic is missing.
"""

from __future__ import annotations

import logging

from whitenoise.storage import CompressedManifestStaticFilesStorage  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)


class GatewayStaticFilesStorage(CompressedManifestStaticFilesStorage):
    """whitenoise's compressed manifest storage; a name missing from the manifest keeps its own URL."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._unhashed_logged: set[str] = set()

    def stored_name(self, name: str) -> str:
        try:
            return super().stored_name(name)
        except ValueError:
            # The manifest is missing or stale; collectstatic's own post-processing never comes here.
            clean = name.split("?", 1)[0].split("#", 1)[0]
            if not self.hashed_files:
                if not self._unhashed_logged:
                    logger.warning(
                        "static files have not been collected: serving them unhashed from the apps; "
                        "run manage.py collectstatic"
                    )
            elif clean not in self._unhashed_logged:
                logger.warning(
                    "%s is not in the static files manifest (collected before it existed): serving it "
                    "unhashed from its app; run manage.py collectstatic",
                    clean,
                )
            self._unhashed_logged.add(clean)
            return clean


def manifest_missing() -> bool:
    """True when the static files storage is a manifest storage and its manifest file is absent."""
    from django.contrib.staticfiles.storage import ManifestFilesMixin
    from django.core.files.storage import storages

    storage = storages["staticfiles"]
    return isinstance(storage, ManifestFilesMixin) and not storage.exists(storage.manifest_name)
