"""Where consented feedback images are kept: S3 (production) or a local folder (default).

Images arrive here already free of metadata (re-encoded from their pixels by
``inference.to_png``) and are named by the sha256 of their content, so a stored name says
nothing about the patient.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

from django.conf import settings


class StorageUnavailable(RuntimeError):
    """The image store cannot be written or read; the message says what to check."""


def content_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() + ".png"


class LocalImageStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def put(self, name: str, data: bytes) -> None:
        """Write atomically: a reader never sees half an image."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, staged = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(staged, self.root / name)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write to {self.root}: {exc.strerror}") from None

    def get(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {name} from {self.root}: {exc}") from None


class S3ImageStore:
    def __init__(self, bucket: str, prefix: str):
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        # boto3 reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and
        # AWS_ENDPOINT_URL (S3-compatible stores) from the environment.
        self.client = boto3.client("s3")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(name), Body=data, ContentType="image/png"
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"cannot write to {self}: {exc}") from None

    def get(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"cannot read {name} from {self}: {exc}") from None


def image_store() -> LocalImageStore | S3ImageStore:
    """The store named by ``settings.FEEDBACK_STORAGE``."""
    location = str(settings.FEEDBACK_STORAGE)
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise StorageUnavailable(f"FEEDBACK_STORAGE={location!r} names no bucket")
        return _s3_store(bucket, prefix)
    return LocalImageStore(Path(location))


@functools.lru_cache(maxsize=4)
def _s3_store(bucket: str, prefix: str) -> S3ImageStore:
    """One boto3 client per process and location: making one loads botocore's service models,
    which is not work to repeat on every consented feedback (boto3 clients are thread-safe)."""
    return S3ImageStore(bucket, prefix)
