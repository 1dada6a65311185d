"""sop_classes.py: storage.accepted_sop_classes / --accept entries to SOP class UIDs."""

from __future__ import annotations

import pytest
from pydicom._uid_dict import UID_dictionary

from pacs_server.config import load_config
from pacs_server.errors import ConfigError
from pacs_server.sop_classes import all_storage_classes, resolve_storage_classes, sop_class_name

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
VERIFICATION = "1.2.840.10008.1.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"


def test_all_storage_classes() -> None:
    every = all_storage_classes()
    assert len(every) > 100
    assert len(set(every)) == len(every)
    assert all(uid.startswith("1.2.840.10008.5.1.4.1.1.") for uid in every)
    for uid in (CT_IMAGE, MR_IMAGE, SC_IMAGE, US_IMAGE, US_MULTIFRAME, COMPREHENSIVE_SR,
                RT_PLAN, ECG_12_LEAD, "1.2.840.10008.5.1.4.1.1.66.4"):  # Segmentation
        assert uid in every, UID_dictionary[uid][0]
    for uid in (VERIFICATION, MEDIA_STORAGE_DIRECTORY, STORAGE_COMMITMENT):
        assert uid not in every
    assert not any(UID_dictionary[uid][3] == "Retired" for uid in every)


def test_empty_means_every_storage_class() -> None:
    assert resolve_storage_classes([]) == all_storage_classes()
    assert resolve_storage_classes(()) == all_storage_classes()


@pytest.mark.parametrize(("entry", "included", "excluded"), [
    ("CT", [CT_IMAGE, ENHANCED_CT], [MR_IMAGE]),
    ("ct", [CT_IMAGE], [MR_IMAGE]),
    (" MR ", [MR_IMAGE], [CT_IMAGE]),
    ("US", [US_IMAGE, US_MULTIFRAME], [CT_IMAGE]),
    ("SR", [COMPREHENSIVE_SR, BASIC_TEXT_SR], [CT_IMAGE]),
    ("OT", [SC_IMAGE], [CT_IMAGE]),
    ("SC", [SC_IMAGE], [CT_IMAGE]),
    ("RTPLAN", [RT_PLAN], [CT_IMAGE]),
    ("ECG", [ECG_12_LEAD], [CT_IMAGE]),
    ("CT Image Storage", [CT_IMAGE], [ENHANCED_CT]),
    ("ct image storage", [CT_IMAGE], [ENHANCED_CT]),
    (CT_IMAGE, [CT_IMAGE], [ENHANCED_CT]),
])
def test_entries(entry: str, included: list[str], excluded: list[str]) -> None:
    uids = resolve_storage_classes([entry])
    for uid in included:
        assert uid in uids, f"{entry!r} should include {sop_class_name(uid)}"
    for uid in excluded:
        assert uid not in uids, f"{entry!r} should not include {sop_class_name(uid)}"


def test_private_uid_passes_through() -> None:
    assert resolve_storage_classes(["1.3.6.1.4.1.9590.100.1.2.1"]) == (
        "1.3.6.1.4.1.9590.100.1.2.1",)


def test_mixed_entries_are_deduplicated_in_order() -> None:
    uids = resolve_storage_classes(["CT Image Storage", "CT", CT_IMAGE, "MR"])
    assert uids[0] == CT_IMAGE
    assert len(uids) == len(set(uids))
    assert MR_IMAGE in uids


@pytest.mark.parametrize("entry", ["XX", "Image Storage", "Cardiac Imaging", "1.2.", "", "../CT"])
def test_unknown_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="is not a modality code"):
        resolve_storage_classes([entry])


def test_config_reports_a_bad_entry() -> None:
    with pytest.raises(ConfigError, match=r"storage\.accepted_sop_classes: 'XX'"):
        load_config(None, {"storage.accepted_sop_classes": "CT, XX"})


def test_sop_class_name() -> None:
    assert sop_class_name(CT_IMAGE) == "CT Image Storage"
    assert sop_class_name("1.2.3.4") == "1.2.3.4"
