"""The linkage table: readable only with its own key, and tamper-evident."""

import pytest
from cryptography.exceptions import InvalidTag

from transforms.linkage import COLUMNS, decrypt_rows, encrypt_rows

ROW = dict.fromkeys(COLUMNS, "v") | {"patient_id": "MRN-1", "patient_pseudonym": "PATX"}


def test_round_trip_and_wrong_key():
    data = encrypt_rows([ROW], b"l" * 32)
    assert b"MRN-1" not in data
    assert decrypt_rows(data, b"l" * 32) == [ROW]
    with pytest.raises(InvalidTag):
        decrypt_rows(data, b"m" * 32)


def test_tampering_is_detected():
    data = bytearray(encrypt_rows([ROW], b"l" * 32))
    data[-1] ^= 1
    with pytest.raises(InvalidTag):
        decrypt_rows(bytes(data), b"l" * 32)
    with pytest.raises(ValueError, match="not a dicomflow linkage file"):
        decrypt_rows(b"plain text", b"l" * 32)
