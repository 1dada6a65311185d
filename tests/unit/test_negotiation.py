"""dicom/negotiation.py: the kept proposals are bounded and forgotten on reload; the
A-ASSOCIATE-AC encoded ahead is the one AE-7 would send."""

from __future__ import annotations

from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from pacs_server.dicom.negotiation import EncodedAccept, NegotiationCache, encode_accept


def accept() -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "SCU"
    primitive.called_ae_title = "PACS"
    primitive.result = 0x00
    primitive.result_source = 0x01
    cx = build_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2.1"])
    cx.context_id = 1
    cx.result = 0x00
    primitive.presentation_context_definition_results_list = [cx]
    max_len = MaximumLengthNotification()
    max_len.maximum_length_received = 16384
    primitive.user_information = [max_len]
    return primitive


def test_encoded_accept_is_what_ae7_sends() -> None:
    expected = bytes(A_ASSOCIATE_AC(accept()).encode())
    encoded = encode_accept(accept())
    assert isinstance(encoded, EncodedAccept)
    assert encoded.encoded == expected
    assert encoded.result == 0x00            # still the accept primitive the DUL reads


def outcome(name: str) -> Any:
    return name    # the cache does not look inside what it keeps


def test_cache_keeps_the_most_recent_proposals() -> None:
    cache = NegotiationCache(size=2)
    cache.put(b"a", outcome("A"))
    cache.put(b"b", outcome("B"))
    assert cache.get(b"a") == "A"            # now the most recently used
    cache.put(b"c", outcome("C"))
    assert cache.get(b"b") is None
    assert (cache.get(b"a"), cache.get(b"c")) == ("A", "C")
    assert len(cache) == 2


def test_cache_forgets_everything_on_clear() -> None:
    cache = NegotiationCache()
    cache.put(b"a", outcome("A"))
    cache.clear()
    assert cache.get(b"a") is None and len(cache) == 0
