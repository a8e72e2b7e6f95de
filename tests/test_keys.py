"""Key sources and fingerprints: the key is read where it is used and never shown."""

import pytest

from transforms.keys import MIN_KEY_BYTES, KeySource, KeySourceError, fingerprint


def test_key_from_env_and_file(tmp_path, monkeypatch):
    key = "z" * 40
    monkeypatch.setenv("K", key + "\n")
    (tmp_path / "key").write_text(key + "\n")
    assert KeySource(env="K").resolve() == key.encode()
    assert KeySource(file=str(tmp_path / "key")).resolve() == key.encode()


def test_errors_never_contain_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SHORT", "secretish")
    with pytest.raises(KeySourceError) as info:
        KeySource(env="SHORT").resolve()
    assert "secretish" not in str(info.value) and str(MIN_KEY_BYTES) in str(info.value)
    with pytest.raises(KeySourceError, match="cannot be read"):
        KeySource(file=str(tmp_path / "missing")).resolve()
    with pytest.raises(KeySourceError, match="exactly one"):
        KeySource()


def test_fingerprint_is_stable_short_and_not_the_key():
    key = b"q" * 32
    assert fingerprint(key) == fingerprint(key)
    assert fingerprint(key) != fingerprint(b"r" * 32)
    assert len(fingerprint(key)) == 16 and key.decode() not in fingerprint(key)
