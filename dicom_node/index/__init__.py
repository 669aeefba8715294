"""dicom_node/index."""
