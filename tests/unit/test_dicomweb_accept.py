"""Accept and Content-Type parsing as real DICOMweb clients send them."""

from __future__ import annotations

from pacs_server.web.dicomweb.accept import parse_accept, parse_media


def test_quoted_and_unquoted_parameters_are_the_same() -> None:
    quoted = parse_media('multipart/related; type="application/dicom"; transfer-syntax=*')
    plain = parse_media("Multipart/Related;TYPE=application/dicom;transfer-syntax=\"*\"")
    assert quoted == plain
    assert quoted.mime == "multipart/related" and quoted.param("type") == "application/dicom"


def test_ranges_split_outside_quotes_and_sort_by_q() -> None:
    ranges = parse_accept('multipart/related; type="a/b, c"; q=0.5, '
                          "application/dicom+json, image/png;q=0")
    assert [r.mime for r in ranges] == ["application/dicom+json", "multipart/related"]
    assert ranges[1].param("type") == "a/b, c"


def test_ohif_frames_accept() -> None:
    (r,) = parse_accept("multipart/related; type=application/octet-stream; "
                        "transfer-syntax=*")
    assert r.param("type") == "application/octet-stream"
    assert r.param("transfer-syntax") == "*"
