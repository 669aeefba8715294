"""The memoised UI validator answers as pydicom's own, and pydicom still warns and refuses as before."""

from __future__ import annotations

import pytest
from pydicom import config, valuerep
from pydicom.uid import UID

from dicom_node.edge.uid_validation import MemoisedValidator, memoise_uid_validation

VALUES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.5.1.4.1.1.2",
    "2.25." + "9" * 59,  # 64 characters
    "2.25." + "9" * 60,  # 65: too long
    "1.2.03",  # a component with a leading zero
    "1.2.3.",
    "1.2.a",
    "",
    " 1.2.3",
]


def test_answers_as_pydicom_for_every_value_twice() -> None:
    original = valuerep.validate_length_and_type_and_regex
    memoised = MemoisedValidator(original)
    for _ in range(2):
        for value in VALUES:
            assert memoised("UI", value) == original("UI", value), value
            uid = UID(value, validation_mode=config.IGNORE)  # stripped of the spaces
            assert memoised("UI", uid) == original("UI", uid), value
    assert memoised.remembered.cache_info().hits >= len(VALUES)
    # Values that are not plain strings are not remembered (and may not be hashable).
    assert memoised("UI", ["1.2.3", "1.2.4"]) == original("UI", ["1.2.3", "1.2.4"])
    assert memoised("UI", b"1.2.3") == original("UI", b"1.2.3")


def test_installed_once_and_pydicom_still_warns_and_raises() -> None:
    memoise_uid_validation()
    installed = valuerep.VALIDATORS["UI"]
    memoise_uid_validation()
    assert valuerep.VALIDATORS["UI"] is installed
    assert isinstance(installed, MemoisedValidator)
    for _ in range(2):  # the second time from memory
        with pytest.warns(UserWarning, match="Invalid value for VR UI"):
            UID("1.2.03", validation_mode=config.WARN)
        with pytest.raises(ValueError, match="Invalid value for VR UI"):
            UID("1.2.a", validation_mode=config.RAISE)
        assert UID("1.2.840.10008.1.2.1", validation_mode=config.RAISE) == "1.2.840.10008.1.2.1"
