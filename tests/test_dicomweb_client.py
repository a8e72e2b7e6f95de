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
        # a non-conformant UID as some anonymizers write it: asked for by its own string
        (
            f"dicomweb+http://h/dw/studies/{'ab' * 32}/series/x-1/instances/Y_2",
            "instance",
            "http://h/dw",
        ),
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
        ("dicomweb+https://h/dw/studies/../x", "needs a UID"),
        ("dicomweb+https://h/dw/studies/1.2/series/a%20b", "needs a UID"),
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


class Answers:
    """A dicomweb-client stand-in that answers searches with given QIDO-RS results (the
    parsing of odd answers is what is tested; the HTTP side runs against Orthanc)."""

    def __init__(self, studies: list, instances: list):
        self._studies = studies
        self._instances = instances

    def search_for_studies(self, search_filters, fields, limit, offset):
        return self._studies[offset : offset + limit]

    def search_for_instances(self, study_instance_uid, series_instance_uid, fields, limit, offset):
        return self._instances[offset : offset + limit]


def _uid(tag: str, value) -> dict:
    return {tag: {"vr": "UI", "Value": [value]}}


def test_odd_search_answers_are_one_row_each_and_odd_uids_are_followed():
    from transforms.dicomweb.source import (
        SERIES_UID,
        SOP_UID,
        STUDY_UID,
        search_instances,
        search_studies,
    )

    hexuid = "ab" * 32  # as some anonymizers write UIDs: the store is asked for it as it is
    store = StoreUrl.parse("dicomweb+http://h/dw")
    studies = [
        _uid(STUDY_UID, "1.2"),
        _uid(STUDY_UID, hexuid),
        {},  # no Study Instance UID
        {STUDY_UID: {"vr": "UI", "Value": [7]}},  # not a string
        _uid(STUDY_UID, "a/b"),  # no URL can carry it
        "not an object",
    ]
    found = search_studies(Answers(studies, []), store, DicomwebSettings())
    assert [f.study for f in found if isinstance(f, StoreUrl)] == ["1.2", hexuid]
    errors = [f for f in found if not isinstance(f, StoreUrl)]
    assert [e.error_type for e in errors] == ["invalid_uid"] * 4
    instances = [
        {**_uid(SERIES_UID, "1.3"), **_uid(SOP_UID, "1.4")},
        {**_uid(SERIES_UID, "1.3"), **_uid(SOP_UID, "1.4")},  # held twice: both count
        {**_uid(SERIES_UID, hexuid), **_uid(SOP_UID, hexuid)},
        _uid(SERIES_UID, "1.3"),  # no SOP Instance UID
        {SOP_UID: {"vr": "UI"}},  # no value
    ]
    found = search_instances(Answers([], instances), store.child(study="1.2"), DicomwebSettings())
    urls = [f for f in found if isinstance(f, StoreUrl)]
    assert [(u.series, u.instance) for u in urls] == [("1.3", "1.4"), ("1.3", "1.4"), (hexuid,) * 2]
    assert [f.error_type for f in found if not isinstance(f, StoreUrl)] == ["invalid_uid"] * 2


def test_a_store_that_ignores_offset_is_searched_once():
    from transforms.dicomweb.source import PAGE, STUDY_UID, search_studies

    class Repeating(Answers):
        def search_for_studies(self, search_filters, fields, limit, offset):
            return self._studies[:limit]

    studies = [_uid(STUDY_UID, f"1.{i}") for i in range(PAGE)]
    store = StoreUrl.parse("dicomweb+http://h/dw")
    assert len(search_studies(Repeating(studies, []), store, DicomwebSettings())) == PAGE
