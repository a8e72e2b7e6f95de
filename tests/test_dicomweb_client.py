"""DICOMweb URLs, credentials and retries (transforms/dicomweb/urls.py, client.py).

The parts that need no server; tests/test_dicomweb.py runs the rest against Orthanc.
"""

import pytest
import requests

from transforms.dicomweb import DicomwebSettings, StoreUrl


@pytest.mark.parametrize(
    "uri, level, base",
    [
        ("dicomweb+https://h.example/dicom-web", "store", "https://h.example/dicom-web"),
        ("dicomweb+http://127.0.0.1:8042/dicom-web/", "store", "http://127.0.0.1:8042/dicom-web"),
        ("dicomweb+http://h/dw/studies/1.2.3", "study", "http://h/dw"),
        ("dicomweb+http://h/dw/studies/1.2/series/1.3", "series", "http://h/dw"),
        ("dicomweb+http://h/dw/studies/1.2/series/1.3/instances/1.4", "instance", "http://h/dw"),
    ],
)
def test_store_urls_parse_at_every_level(uri, level, base):
    url = StoreUrl.parse(uri)
    assert (url.level, url.base) == (level, base)
    assert StoreUrl.parse(url.uri) == url


@pytest.mark.parametrize(
    "uri, message",
    [
        ("dicomweb+https://user:secret@h/dw", "credentials do not belong"),
        ("dicomweb+https://h/dw?StudyDate=2020", "--dicomweb-query"),
        ("dicomweb+https://h/dw/studies/../x", "valid UID"),
        ("dicomweb+https://h/dw/studies/1.2/instances/1.3", "ends in /studies/S"),
        ("https://h/dw", "starts with dicomweb"),
    ],
)
def test_bad_store_urls_are_refused_with_a_reason(uri, message):
    with pytest.raises(ValueError, match=message) as info:
        StoreUrl.parse(uri)
    assert "secret" not in str(info.value)


def test_cloud_healthcare_urls_use_google_credentials(monkeypatch):
    from transforms.dicomweb import client as client_mod

    url = StoreUrl.parse(
        "dicomweb+https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/"
        "dicomStores/s/dicomWeb"
    )
    assert url.google
    seen = {}

    class Credentials:
        token, expired, valid = "t", False, True

    def default(scopes):
        seen["scopes"] = scopes
        return Credentials(), "p"

    monkeypatch.setattr("google.auth.default", default)
    session = client_mod.make_session(url, DicomwebSettings())
    from google.auth.transport.requests import AuthorizedSession

    assert isinstance(session, AuthorizedSession)
    assert seen["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]


def test_bearer_and_basic_credentials_come_from_env_or_file(monkeypatch, tmp_path):
    from transforms.dicomweb import client as client_mod

    url = StoreUrl.parse("dicomweb+https://pacs.example/dicom-web")
    monkeypatch.setenv("DW_TOKEN", "tok-123")
    session = client_mod.make_session(url, DicomwebSettings(credentials_env="DW_TOKEN"))
    assert session.headers["Authorization"] == "Bearer tok-123"
    (tmp_path / "secret").write_text("alice:pa:ss\n")
    session = client_mod.make_session(
        url, DicomwebSettings(credentials_file=str(tmp_path / "secret"))
    )
    assert (session.auth.username, session.auth.password) == ("alice", "pa:ss")
    monkeypatch.delenv("DW_TOKEN")
    with pytest.raises(client_mod.CredentialsError, match="DW_TOKEN is not set"):
        client_mod.make_session(url, DicomwebSettings(credentials_env="DW_TOKEN"))


def test_retries_back_off_on_429_and_5xx_and_give_up_with_the_status():
    from transforms.dicomweb.client import RequestFailed, call_with_retries

    def failing(statuses):
        def call():
            status = statuses.pop(0)
            if status == "drop":
                raise requests.ConnectionError("http://h/dw/studies/1.2.3 refused")
            if status != 200:
                response = requests.Response()
                response.status_code = status
                raise requests.HTTPError("http://h/dw/studies/1.2.3", response=response)
            return "ok"

        return call

    sleeps: list[float] = []
    settings = DicomwebSettings(attempts=4, backoff_seconds=1.0)
    assert (
        call_with_retries(failing([503, 429, "drop", 200]), settings, sleep=sleeps.append) == "ok"
    )
    assert len(sleeps) == 3 and 0.5 <= sleeps[0] <= 1.5 and 2.0 <= sleeps[2] <= 6.0
    with pytest.raises(RequestFailed, match="HTTP 503 after 4 attempts") as info:
        call_with_retries(failing([503] * 4), settings, sleep=sleeps.append)
    assert "1.2.3" not in str(info.value)  # no URL (UIDs) in messages
    with pytest.raises(RequestFailed, match=r"^HTTP 404$"):  # not retryable: at once
        call_with_retries(failing([404, 200]), settings, sleep=sleeps.append)
