"""WSGI entry point (gunicorn xrayweb.wsgi). Loads the model at worker start, not on the first
request, so a clinician never waits for it."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xrayweb.settings")
application = get_wsgi_application()

from diagnosis.inference import warm_up  # noqa: E402  (needs the configured settings)

warm_up()
