"""dicom_node/workflow."""
