"""Views by audience: ``pages`` (browser), ``api`` (JSON, tokens), ``errors``; ``common``
holds what pages and API share."""
