"""The pseudonymization key: where it comes from, and the only thing ever said about it.

The key is named, never carried: pipelines pass a ``KeySource`` (an environment variable
name or a file URI) and each worker resolves it in ``DoFn.setup``. So the key is not
pickled into the job graph, not shipped to the Dataflow service, not logged and not
written; ``manifest.json`` records a fingerprint that cannot be turned back into it.
"""

import hashlib
import os
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

# At least 32 bytes as given (64 hex digits are 256 bits, 32 are 128): a fingerprint of a
# shorter key could be brute-forced.
MIN_KEY_BYTES = 32


class KeySourceError(ValueError):
    """The key is missing, unreadable or too short. Messages never contain key bytes."""


@dataclass(frozen=True)
class KeySource:
    """Where a worker finds a key: exactly one of an environment variable or a file URI."""

    env: str | None = None
    file: str | None = None

    def __post_init__(self):
        if (self.env is None) == (self.file is None):
            raise KeySourceError("give exactly one of --key-env VAR or --key-file PATH")

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def resolve(self) -> bytes:
        """Reads the key. Surrounding whitespace (a trailing newline) is not part of it."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise KeySourceError(f"environment variable {self.env} is not set")
            key = value.strip().encode()
        else:
            try:
                with FileSystems.open(self.file) as fh:
                    key = fh.read().strip()
            except Exception as e:
                raise KeySourceError(
                    f"key file {self.file} cannot be read ({type(e).__name__})"
                ) from None
        if len(key) < MIN_KEY_BYTES:
            raise KeySourceError(
                f"the key from {self.describe()} is shorter than {MIN_KEY_BYTES} bytes; "
                "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"
            )
        return key


def fingerprint(key: bytes) -> str:
    """A short, stable name for a key, safe to record: SHA-256 under a fixed label."""
    return hashlib.sha256(b"dicomflow key fingerprint\x00" + key).hexdigest()[:16]
