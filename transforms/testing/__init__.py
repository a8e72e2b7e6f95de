"""The synthetic corpus: a fake PACS export with planted PHI, labels, archives and junk.

Like ``apache_beam.testing``, this ships inside the package because a command needs it
(``dicomflow synth`` and ``dicomflow demo``) besides the tests. It builds no Beam graph:
``pipelines/synth.py`` is the Beam shell around ``synth_patient`` and ``synth_extras``.

- ``identities``: fake people, studies and institutions with distinctive names;
- ``images``: phantoms, lesions, burned-in text and the encodings of pixel data;
- ``datasets``: the DICOM datasets, module by module;
- ``corpus``: patients and junk assembled into files, PHI records and label rows.
"""

from transforms.testing.corpus import (
    CORRUPT_MEMBER,
    CORRUPT_ZIP,
    GOOD_ZIP_MEMBERS,
    JUNK,
    UNSUPPORTED_TS,
    CorpusPart,
    SynthFile,
    synth_extras,
    synth_patient,
)
from transforms.testing.datasets import PRIVATE_CREATOR, available_transfer_syntaxes
from transforms.testing.difficulty import DEFAULT as DEFAULT_DIFFICULTY
from transforms.testing.difficulty import DEFAULT_NAME as DIFFICULTY_NAME
from transforms.testing.difficulty import PRESETS as DIFFICULTY_PRESETS
from transforms.testing.difficulty import SKE_SIZE, Difficulty
from transforms.testing.identities import FAMILY, GIVEN, MIDDLE
from transforms.testing.images import CYCLE, KINDS, LOSSY_SYNTAXES, TRANSFER_SYNTAXES

__all__ = [
    "CORRUPT_MEMBER",
    "CORRUPT_ZIP",
    "CYCLE",
    "DEFAULT_DIFFICULTY",
    "DIFFICULTY_NAME",
    "DIFFICULTY_PRESETS",
    "FAMILY",
    "GIVEN",
    "GOOD_ZIP_MEMBERS",
    "JUNK",
    "KINDS",
    "LOSSY_SYNTAXES",
    "MIDDLE",
    "PRIVATE_CREATOR",
    "SKE_SIZE",
    "TRANSFER_SYNTAXES",
    "UNSUPPORTED_TS",
    "CorpusPart",
    "Difficulty",
    "SynthFile",
    "available_transfer_syntaxes",
    "synth_extras",
    "synth_patient",
]
