"""WSGI entry point (``manage.py runserver``, or gunicorn's sync workers). Production runs the
ASGI one (xrayweb.asgi): slow clients cannot hold a worker there."""

import os

from django.core.wsgi import get_wsgi_application

from xrayweb.startup import return_large_buffers_to_the_os, start_serving

return_large_buffers_to_the_os()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xrayweb.settings")
application = get_wsgi_application()
start_serving()
