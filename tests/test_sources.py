"""The source and sink registry (transforms/sources/): which source owns a URL, the
settings every source contributes, and the one-line refusals before any work.

The sources themselves run against real stores in test_dicomweb.py and test_dimse.py.
"""

import argparse

import pytest

from models import configs
from transforms.dicomweb import DicomwebSettings
from transforms.sources import registry
from transforms.sources.dicomweb import DicomwebSink, DicomwebSource
from transforms.sources.dimse import DimseSink, DimseSource
from transforms.sources.files import FileSource
from transforms.sources.registry import SourceSettings


def parse(argv: list[str]) -> SourceSettings:
    parser = argparse.ArgumentParser()
    configs.add_arguments(parser, SourceSettings)
    return configs.from_namespace(SourceSettings, parser.parse_args(argv))


@pytest.mark.parametrize(
    ("uri", "source"),
    [
        ("dicomweb+https://h/dicom-web", DicomwebSource),
        ("dimse://PACS@10.0.0.5:11112", DimseSource),
        ("gs://bucket/export/", FileSource),
        ("/data/export/*.dcm", FileSource),
        ("file:///data/x.zip", FileSource),
    ],
)
def test_each_url_belongs_to_one_source(uri, source):
    assert registry.source_for(uri) is source


def test_inputs_become_one_typed_source_per_kind():
    given = parse(["--dicomweb-max-concurrency", "3"])
    sources = registry.configure_inputs(
        ["dicomweb+http://h/dw", "dicomweb+http://h/dw/studies/1.2", "/data/a"], given
    )
    assert [type(s) for s in sources] == [DicomwebSource, FileSource]
    web, files = sources
    assert isinstance(web, DicomwebSource) and web.settings.max_concurrency == 3
    assert [s.level for s in web.stores] == ["store", "study"]
    assert isinstance(files, FileSource) and files.uris == ("/data/a",)
    assert registry.describe_inputs(sources) == [
        "dicomweb+http://h/dw (1 studies, series or instances in it)",
        "/data/a",
    ]


def test_a_sources_flags_without_its_inputs_are_refused():
    given = parse(["--dicomweb-query", "ModalitiesInStudy=CT"])
    with pytest.raises(ValueError, match="--dicomweb-query: for dicomweb inputs only"):
        registry.configure_inputs(["/data/a"], given)


def load(data: dict) -> SourceSettings:
    settings = configs.from_mapping(SourceSettings, data, "sources")
    settings.check()
    return settings


def test_run_yaml_sources_are_checked_and_given_to_the_stages_that_use_them():
    given = load({"dicomweb": {"query": "StudyDate=2020", "max_concurrency": 4}})
    wanted = DicomwebSettings(query="StudyDate=2020", max_concurrency=4)
    assert given.of(DicomwebSource) == wanted
    assert given.for_inputs(["dicomweb+http://h/dw"]) == given
    assert given.for_inputs(["/data/a"]) == SourceSettings()  # no store among the inputs
    for bad, message in (
        ({"ftp": {}}, r"unknown keys \['ftp'\]"),
        ({"dicomweb": {"attempts": 9}}, r"unknown keys \['attempts'\]"),
        ({"dicomweb": {"query": "=x&&"}}, "sources.dicomweb: .*Key=value"),
    ):
        with pytest.raises(ValueError, match=message):
            load(bad)


def test_the_output_store_is_chosen_by_scheme_with_its_own_credentials():
    given = parse(["--dicomweb-credentials-env", "IN"])
    sink = registry.configure_sink("dicomweb+https://h/dw", given, credentials_file="/s/out")
    assert isinstance(sink, DicomwebSink)
    assert (sink.settings.credentials_env, sink.settings.credentials_file) == (None, "/s/out")
    with pytest.raises(ValueError, match="--output-store takes"):
        registry.configure_sink("gs://bucket/out", given)
    with pytest.raises(ValueError, match="root, not a study"):
        registry.configure_sink("dicomweb+https://h/dw/studies/1.2", given)
    node = registry.configure_sink("dimse://PACS@h:11112", given)
    assert isinstance(node, DimseSink) and node.describe() == "dimse://PACS@h:11112"
    with pytest.raises(ValueError, match="a dimse store takes none"):
        registry.configure_sink("dimse://PACS@h:11112", given, credentials_env="X")
    with pytest.raises(ValueError, match="-file only"):
        registry.configure_sink("dicomweb+https://h/dw", given, credentials_env="X", dataflow=True)
