"""dicom_node/ops."""
