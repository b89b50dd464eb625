"""manage.py purge_held: delete expired held images and heat maps now (diagnosis.held)."""

from django.core.management.base import BaseCommand

from diagnosis.held import purge_expired


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        self.stdout.write(f"deleted {purge_expired()} expired held item(s)")
