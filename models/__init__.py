"""Model bundles (one folder per model, MONAI bundle layout) and the code that installs and loads them.

Public surface: ``models.registry.model_statuses(models_dir) -> list[ModelStatus]``;
``models.loader.load_model(models_dir, name, device)`` (verified, warm per process);
``models.installer.import_weights`` / ``pull`` / ``scaffold``; ``models.manifest.default_models_dir()``
(``$DICOM_NODE_MODELS_DIR`` or ``./models``) and ``MODEL_NAMES``. Nothing here imports ``dicom_node``.
"""
