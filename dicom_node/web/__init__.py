"""DICOMweb over HTTP: QIDO-RS, WADO-RS and STOW-RS on the same index and store as the DICOM edge."""
