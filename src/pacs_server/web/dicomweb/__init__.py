"""DICOMweb (PS3.18) on the HTTP side: QIDO-RS, WADO-RS, STOW-RS and WADO-URI over the
same services as the DICOM side (`services/dicomweb*.py`); `routes.install()` adds it."""
