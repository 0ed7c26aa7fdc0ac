"""Building blocks shared by the DICOM writers: identity attributes copied from the reference,
code items and instance references."""

from __future__ import annotations

from pydicom.dataset import Dataset

# Copied from the fixed (reference) series only: patient, study and frame-of-reference identity.
_PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "PatientAge", "PatientSize", "PatientWeight",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Laterality", "PatientPosition", "BodyPartExamined",
)
# Type 2 attributes that must be present (empty when the reference lacks them).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
          "PatientPosition", "Laterality")  # the last two are 2C: required for CT/MR here

_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


def _code(value: str, scheme: str, meaning: str):
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ref_item(sop_class: str, sop_instance: str, *, purpose: bool = False):
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if purpose:
        item.PurposeOfReferenceCodeSequence = [_code(*_SOURCE_PURPOSE)]
    return item


def _add_instance_references(ds, refs: dict[tuple[str, str], list[tuple[str, str]]], study_uid: str) -> None:
    """Common Instance Reference module: ``refs`` maps (study, series) UIDs to (class, instance) UIDs.

    Series of ``study_uid`` go to ReferencedSeriesSequence, the others to
    StudiesContainingOtherReferencedInstancesSequence.
    """

    same, other = [], {}
    for (study, series), sops in refs.items():
        item = Dataset()
        item.SeriesInstanceUID = series
        item.ReferencedInstanceSequence = [_ref_item(*sop) for sop in sops]
        if study == study_uid:
            same.append(item)
        else:
            other.setdefault(study, []).append(item)
    if same:
        ds.ReferencedSeriesSequence = same
    if other:
        studies = []
        for study, series_items in other.items():
            st = Dataset()
            st.StudyInstanceUID = study
            st.ReferencedSeriesSequence = series_items
            studies.append(st)
        ds.StudiesContainingOtherReferencedInstancesSequence = studies
