"""dicom_node/storage."""
