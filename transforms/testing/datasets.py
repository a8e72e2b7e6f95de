"""DICOM datasets of the synthetic corpus, module by module (patient, study, series, image)."""

from __future__ import annotations

import functools
import io

import numpy as np
from pydicom import dcmread, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from transforms.testing.identities import _item, _Person, _person, _Study, _study, _uid
from transforms.testing.images import (
    _BODY_PART,
    _IMPLEMENTATION_UID,
    KINDS,
    LOSSY_SYNTAXES,
    MANUFACTURERS,
    TRANSFER_SYNTAXES,
    _encode,
    _Kind,
    _text_mask,
)

PRIVATE_CREATOR = "ACME_PACS 1.0"


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.UID(sop_class)
    meta.MediaStorageSOPInstanceUID = uid.UID(sop_uid)
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid.UID(_IMPLEMENTATION_UID)
    meta.ImplementationVersionName = "DICOMFLOW_SYNTH"
    return meta


def _patient_module(ds: Dataset, p: _Person, study_date: str) -> None:
    ds.PatientName = p.name
    ds.PatientID = p.pid
    ds.IssuerOfPatientID = "ACME_MRN"
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.PatientAge = f"{(int(study_date[:4]) - int(p.birth_date[:4])):03d}Y"
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    other = _item(PatientID=p.other_id, IssuerOfPatientID="HOSP_B", TypeOfPatientID="TEXT")
    ds.OtherPatientIDsSequence = Sequence([other])
    patient_ref = "1.2.840.10008.3.1.2.1.1"  # Detached Patient Management SOP Class
    ref = _item(ReferencedSOPClassUID=patient_ref, ReferencedSOPInstanceUID=p.uid)
    ds.ReferencedPatientSequence = Sequence([ref])


def _study_module(ds: Dataset, st: _Study, p: _Person) -> None:
    ds.StudyInstanceUID = st.uid
    ds.StudyDate, ds.StudyTime = st.date, st.time
    ds.ReferringPhysicianName = st.referring
    ds.StudyID = st.accession[-5:]
    ds.AccessionNumber = st.accession
    ds.StudyDescription = f"{KINDS[st.kind].modality} {_BODY_PART[st.kind]} {p.name}"[:64]
    ds.InstitutionName, ds.InstitutionAddress = st.institution
    ds.Manufacturer = MANUFACTURERS[st.kind]
    ds.StationName = f"ACME-{st.kind}-07"
    ds.DeviceSerialNumber = "SN-0042-7781"


def _request_attributes(st: _Study, p: _Person) -> Sequence:
    # Worklist text ends up three sequences deep: a de-id pass must recurse to find it.
    concept = _item(CodeValue="121106", CodingSchemeDesignator="DCM", CodeMeaning="Comment")
    context = _item(
        ValueType="TEXT",
        ConceptNameCodeSequence=Sequence([concept]),
        TextValue=f"Scheduled for {p.name}, MRN {p.other_id}",
    )
    protocol = _item(
        CodeValue=f"P-{st.kind}",
        CodingSchemeDesignator="99ACME",
        CodeMeaning=f"{st.kind} routine",
        ProtocolContextSequence=Sequence([context]),
    )
    request = _item(
        RequestedProcedureID=st.rp_id,
        ScheduledProcedureStepID=st.sps_id,
        AccessionNumber=st.accession,
        RequestedProcedureDescription=f"{st.kind} {_BODY_PART[st.kind]}",
        ScheduledProtocolCodeSequence=Sequence([protocol]),
    )
    return Sequence([request])


def _series_module(ds: Dataset, st: _Study, p: _Person, series_no: int, series_time: str) -> None:
    ds.Modality = KINDS[st.kind].modality
    ds.SeriesInstanceUID = _uid(st.uid, "series", series_no)
    ds.SeriesNumber = series_no
    ds.SeriesDate, ds.SeriesTime = st.date, series_time
    ds.SeriesDescription = f"{_BODY_PART[st.kind]} S{series_no} {p.family}^{p.given}"
    ds.PerformingPhysicianName = st.performing
    ds.OperatorsName = st.operator
    ds.BodyPartExamined = _BODY_PART[st.kind]
    ds.RequestAttributesSequence = _request_attributes(st, p)
    ds.FrameOfReferenceUID = _uid(st.uid, "for", series_no)
    ds.PositionReferenceIndicator = ""


def _image_module(ds: Dataset, st: _Study, p: _Person, number: int, time: str) -> None:
    ds.InstanceNumber = number
    ds.ContentDate, ds.ContentTime = st.date, time
    ds.AcquisitionDate, ds.AcquisitionTime = st.date, time
    ds.AcquisitionDateTime = f"{st.date}{time}.000000"
    ds.InstanceCreationDate, ds.InstanceCreationTime = st.date, time
    ds.ImageComments = f"Follow-up for {p.family}, {p.given} ({p.pid})"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] + (["AXIAL"] if st.kind in ("CT", "MR") else [])
    ds.BurnedInAnnotation = "YES" if st.kind == "US" else "NO"
    ds.LossyImageCompression = "00"
    if st.kind not in ("CT", "MR"):
        ds.PatientOrientation = ["L", "F"] if st.kind != "SC" else ""


def _modality_module(ds: Dataset, kind: str, rng: np.random.Generator, number: int) -> None:
    """The acquisition attributes each IOD requires."""
    if kind in ("CT", "MR"):
        ds.PatientPosition = "HFS"
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-80, -80, f"{number * 5}"]
        ds.SliceThickness, ds.SliceLocation = "5", f"{number * 5}"
    if kind == "CT":
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    elif kind == "MR":
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "500", "15", 1
        ds.MagneticFieldStrength = "1.5"
    elif kind in ("CR", "DX"):
        ds.ViewPosition = str(rng.choice(["PA", "AP", "LL"]))
        ds.ImagerPixelSpacing = ["0.15", "0.15"]
        ds.KVP = "70"
    if kind == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.PresentationLUTShape, ds.DetectorType = "IDENTITY", "DIRECT"
    elif kind == "XA":
        ds.KVP, ds.RadiationSetting, ds.PositionerMotion = "80", "GR", "STATIC"
        ds.PixelIntensityRelationship = "LIN"
        ds.FrameTime = "66.7"
        ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    elif kind == "SC":
        ds.ConversionType = "WSD"


def _pixel_module(ds: Dataset, kind: _Kind, arr: np.ndarray, bits_stored: int) -> None:
    ds.SamplesPerPixel = kind.samples
    ds.PhotometricInterpretation = kind.photometric
    if kind.samples > 1:
        ds.PlanarConfiguration = 0
    if kind.multiframe:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-3:-1] if kind.samples > 1 else arr.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = kind.bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    if arr.dtype.kind == "i":
        ds.PixelPaddingValue = -2000


def _overlay(ds: Dataset, mask: np.ndarray) -> None:
    """Group 6000 graphics overlay, bit-packed as PS3.5 8.1.2 says (LSB first)."""
    packed = np.packbits(mask.ravel(), bitorder="little").tobytes()
    ds.add_new(0x60000010, "US", mask.shape[0])
    ds.add_new(0x60000011, "US", mask.shape[1])
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    # OB, not OW: the packed bytes then need no swapping for the big-endian syntax.
    ds.add_new(0x60003000, "OB", packed + b"\0" * (len(packed) % 2))


def _private_tags(ds: Dataset, p: _Person) -> None:
    # PACS vendors copy demographics into their own tags, including inside private sequences.
    block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", p.name)
    block.add_new(0x02, "LO", p.pid)
    block.add_new(0x03, "LO", p.private_key)
    item = Dataset()
    item.private_block(0x0011, PRIVATE_CREATOR, create=True).add_new(0x01, "LO", p.name)
    block.add_new(0x10, "SQ", Sequence([item]))


def _image_dataset(
    p: _Person, st: _Study, series_no: int, number: int, arr: np.ndarray, rng: np.random.Generator
) -> Dataset:
    """One complete image dataset (without Pixel Data) carrying every planted identifier."""
    kind = KINDS[st.kind]
    sop_uid = _uid(st.uid, "sop", series_no, number)
    series_time = f"{st.time[:2]}{(int(st.time[2:4]) + series_no * 7) % 60:02d}{st.time[4:]}"
    ds = Dataset()
    ds.file_meta = _file_meta(kind.sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = kind.sop_class, sop_uid
    _patient_module(ds, p, st.date)
    _study_module(ds, st, p)
    _series_module(ds, st, p, series_no, series_time)
    _image_module(ds, st, p, number, series_time)
    _modality_module(ds, st.kind, rng, number)
    bits_stored = {"CT": 16 if arr.dtype.kind == "i" else 12, "DX": 14}.get(st.kind, 12)
    _pixel_module(ds, kind, arr, 8 if kind.bits_allocated == 8 else bits_stored)
    if kind.bits_allocated == 16:
        _overlay(ds, _text_mask(arr.shape, [p.pid]))
    _private_tags(ds, p)
    return ds


# ---------------------------------------------------------------- encoding


@functools.cache
def _probe() -> tuple[str, ...]:
    person = _person(np.random.default_rng(0), "PROBE", "PROBE", "", "PROBE")
    works = []
    for ts in TRANSFER_SYNTAXES:
        kind = "US" if ts == uid.JPEGBaseline8Bit else "CT"
        arr = np.arange(32 * 48).reshape(32, 48) % 200
        arr = arr.astype(np.uint8 if kind == "US" else np.uint16)
        try:
            st = _study(np.random.default_rng(0), kind, (0,), 0.0)
            ds = _image_dataset(person, st, 1, 1, arr, np.random.default_rng(0))
            out = dcmread(io.BytesIO(_encode(ds, arr, ts))).pixel_array
        except Exception:  # a missing plugin or a broken codec: cannot write it here
            continue
        if ts in LOSSY_SYNTAXES or np.array_equal(out, arr):
            works.append(str(ts))
    return tuple(works)


def available_transfer_syntaxes() -> list[str]:
    """Transfer syntax UIDs this machine can write and read back (probed once)."""
    return list(_probe())


# ---------------------------------------------------------------- delivery
