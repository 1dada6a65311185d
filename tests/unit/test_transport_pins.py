"""dicom/transport.py overrides pynetdicom internals; this fails loudly when their source
changes, so an upgrade of pynetdicom is a decision and not a surprise.

When it fails: read the upstream change, check the override (its docstring says what it
replaces and why), adjust dicom/transport.py, then update the digest here and the pin in
pyproject.toml.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import pynetdicom
import pytest
from pynetdicom.acse import ACSE
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import (
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

# Overridden (first seven) or relied upon as they are: the socket is wrapped in
# get_request only when ssl_context is set (we never set it), the request thread does not
# close a socket that handle() handed on, and the DUL reads a PDU as recv(6) then
# recv(length), which GuardedSocket.recv counts on.
PINNED: dict[str, tuple[Any, str]] = {
    "RequestHandler.handle": (RequestHandler.handle, "034823fb4df3a874"),
    "RequestHandler._create_association": (RequestHandler._create_association,
                                           "05c8d12b79863cdb"),
    "ACSE._negotiate_as_acceptor": (ACSE._negotiate_as_acceptor, "fffd360957c42a8e"),
    "Association.run_reactor": (Association.run_reactor, "ed8bbbe3b3d6ddae"),
    "AssociationSocket.recv": (AssociationSocket.recv, "6bc20a33b1b7cfe7"),
    "StateMachine.do_action": (StateMachine.do_action, "9a883f44c7f31641"),
    "AssociationServer.service_actions": (AssociationServer.service_actions, "0a0853a3615ac7c5"),
    "AssociationServer.get_request": (AssociationServer.get_request, "925a4f3a3042f6e4"),
    # SO_REUSEPORT is set before upstream's bind (server.workers).
    "AssociationServer.server_bind": (AssociationServer.server_bind, "cf69278a05a5c777"),
    "ThreadedAssociationServer.process_request_thread": (
        ThreadedAssociationServer.process_request_thread, "9e76e9b9c8a3d8b1"),
    "DULServiceProvider._read_pdu_data": (DULServiceProvider._read_pdu_data,
                                          "19f2d4e38c13c835"),
    # Retrieve from the stored file: PacsAssociation/RequestorAssociation.send_c_store
    # hands a path or a converted dataset to upstream's; the retrieve SCPs hand it each
    # yielded Dataset (our StoredFile); AE.associate's result changes class.
    "Association.send_c_store": (Association.send_c_store, "fa5a8127f349f8e7"),
    "AE.associate": (ApplicationEntity.associate, "dbc8cf47090386b2"),
    "QueryRetrieveServiceClass._get_scp": (QueryRetrieveServiceClass._get_scp,
                                           "8ca1538e3e56c4f7"),
    "QueryRetrieveServiceClass._move_scp": (QueryRetrieveServiceClass._move_scp,
                                            "5c14d1be3d737bef"),
    # BoundedSendQueue: what the DUL does with its to-provider queue.
    "DULServiceProvider.send_pdu": (DULServiceProvider.send_pdu, "7cbce5da8594124e"),
    "DULServiceProvider._process_recv_primitive": (
        DULServiceProvider._process_recv_primitive, "4c0ebbb3e646e35e"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_overridden_upstream_source_unchanged(name: str) -> None:
    func, digest = PINNED[name]
    actual = hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]
    assert actual == digest, (
        f"pynetdicom {pynetdicom.__version__} changed {name} (digest {actual}, tested "
        f"{digest}): review the override in src/pacs_server/dicom/transport.py")


def test_pinned_minor_version() -> None:
    assert pynetdicom.__version__.startswith("3.0."), pynetdicom.__version__
