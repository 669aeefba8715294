"""dicom_node."""
