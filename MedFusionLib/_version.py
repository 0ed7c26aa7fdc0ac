"""The version of MedFusion (the package, the CLI's --version, DICOM SoftwareVersions)."""

__version__ = "0.1.0"
