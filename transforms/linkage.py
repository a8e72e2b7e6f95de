"""The optional linkage table: original identifiers → pseudonyms, encrypted at rest.

Written only when asked for, to its own URI, as AES-256-GCM over a CSV. The linkage key is
separate from the pseudonymization key, so holding the de-identified data and one key is
not enough to re-identify anyone.
"""

import csv
import hashlib
import io
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from transforms.storage import write_bytes

COLUMNS = (
    "patient_id",
    "patient_pseudonym",
    "study_instance_uid",
    "study_pseudonym",
    "accession_number",
    "accession_pseudonym",
)
_MAGIC = b"DFLINK1\0"  # format marker: magic, 12-byte nonce, ciphertext with tag


def _aes_key(key: bytes) -> bytes:
    return hashlib.sha256(b"dicomflow linkage\x00" + key).digest()


def encrypt_rows(rows: list[dict[str, str]], key: bytes) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: tuple(r[c] for c in COLUMNS)))
    nonce = os.urandom(12)
    sealed = AESGCM(_aes_key(key)).encrypt(nonce, text.getvalue().encode(), _MAGIC)
    return _MAGIC + nonce + sealed


def decrypt_rows(data: bytes, key: bytes) -> list[dict[str, str]]:
    """Reads a linkage file back (raises on a wrong key or a tampered file)."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a dicomflow linkage file")
    nonce, sealed = data[len(_MAGIC) : len(_MAGIC) + 12], data[len(_MAGIC) + 12 :]
    text = AESGCM(_aes_key(key)).decrypt(nonce, sealed, _MAGIC).decode()
    return list(csv.DictReader(io.StringIO(text)))


def write_linkage(rows: list[tuple[tuple[str, str], ...]], uri: str, key_source) -> None:
    """Beam step: rows arrive as sorted item tuples (hashable, so they can be deduplicated)."""
    write_bytes(uri, encrypt_rows([dict(r) for r in rows], key_source.resolve()))
