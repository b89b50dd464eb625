"""Django's database sessions, refusing session keys that Django could never have issued.

A cookie such as ``sessionid="abcdefgh\\x00ijklmnop"`` reached PostgreSQL as a query value and
failed there (text cannot hold NUL): an unauthenticated 500. Django issues keys of 32 lowercase
letters and digits; anything else is no session (a fresh, anonymous one), as an expired key is.
"""

from __future__ import annotations

import string

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

KEY_CHARACTERS = frozenset(string.ascii_lowercase + string.digits)


class SessionStore(DatabaseSessionStore):
    def _validate_session_key(self, key: str | None) -> bool:
        return (
            super()._validate_session_key(key)
            and len(key) <= 40  # the table's column
            and set(key) <= KEY_CHARACTERS
        )
