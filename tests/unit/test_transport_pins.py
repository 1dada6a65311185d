"""dicom/transport.py and the other override modules it lists in its docstring
(reactor, acceptor, negotiation, find_scp, storage_scp, retrieve_scp, file_sending,
store_send, response_read, requestor, receive, accept, connection, lent_dul, closing)
override pynetdicom internals; this fails loudly when their source changes, so an upgrade
of pynetdicom is a decision and not a surprise.

When it fails: read the upstream change, check the override (its docstring says what it
replaces and why), adjust the override module, then update the digest here and the pin
in pyproject.toml.
"""

from __future__ import annotations

import hashlib
import inspect
import socketserver
from typing import Any

import pynetdicom
import pytest
from pynetdicom import _handlers, dsutils, events, evt, fsm, sop_class
from pynetdicom.acse import ACSE
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association, ServiceUser
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE, DIMSEPrimitive
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.service_class import (
    BasicWorklistManagementServiceClass,
    QueryRetrieveServiceClass,
    ServiceClass,
    StorageServiceClass,
    attempt,
)
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
    # dicom/accept.py: a worker adopts the supervisor's socket instead of binding,
    # closes it without upstream's shutdown(), and admits each connection in its
    # thread before upstream's process_request_thread serves it (server.workers).
    "AssociationServer.server_bind": (AssociationServer.server_bind, "cf69278a05a5c777"),
    "AssociationServer.server_close": (AssociationServer.server_close, "3fa1b358badbe682"),
    "ThreadedAssociationServer.process_request_thread": (
        ThreadedAssociationServer.process_request_thread, "9e76e9b9c8a3d8b1"),
    "DULServiceProvider._read_pdu_data": (DULServiceProvider._read_pdu_data,
                                          "19f2d4e38c13c835"),
    # dicom/connection.py: the accept loop starts the association's own thread, the
    # association built in it; upstream's active_associations (AcceptorThread names,
    # `_server`; the AE's: Association instances, `ae`) then see it before it is built.
    "AssociationServer.active_associations": (AssociationServer.active_associations.fget,
                                              "2dc018cb7d13020d"),
    "ApplicationEntity.active_associations": (ApplicationEntity.active_associations.fget,
                                              "23da190dfcca5dbd"),
    # Retrieve from the stored file: PacsAssociation/RequestorAssociation.send_c_store
    # hands a path or a converted dataset to upstream's; the retrieve SCPs hand it each
    # yielded Dataset (our StoredFile); AE.associate's result changes class.
    "Association.send_c_store": (Association.send_c_store, "fa5a8127f349f8e7"),
    "AE.associate": (ApplicationEntity.associate, "dbc8cf47090386b2"),
    "QueryRetrieveServiceClass._get_scp": (QueryRetrieveServiceClass._get_scp,
                                           "8ca1538e3e56c4f7"),
    "QueryRetrieveServiceClass._move_scp": (QueryRetrieveServiceClass._move_scp,
                                            "5c14d1be3d737bef"),
    # ExclusiveDimse / RequestorAssociation: the reactor's poll of the DIMSE queue and
    # the send_*() methods (pause the reactor, send, wait with get_msg(block=True)).
    "Association._run_reactor": (Association._run_reactor, "f28838c5559e462a"),
    "DIMSEServiceProvider.get_msg": (DIMSEServiceProvider.get_msg, "890e3e04283f5aeb"),
    "Association.send_c_echo": (Association.send_c_echo, "664d0e9b0ab20c53"),
    "Association.send_n_event_report": (Association.send_n_event_report,
                                        "e3d427e77369680c"),
    # PacsAssociation._serve_request answers a refused C-MOVE itself, runs a C-FIND with
    # find_scp.serve_find (a copy of its last part), else calls upstream's.
    "Association._serve_request": (Association._serve_request, "2f24c1759cdf6c8c"),
    # dicom/receive.py: GatedDimse / ReceivingMessage / ReceivedStore (a C-STORE data
    # set written straight into its receive file, the primitive built from the decoded
    # fields as message_to_primitive does) and GatedMessage / DiscardedStore (dropped
    # unread below storage.min_free_bytes); the Storage SCP closes and unlinks
    # `_dataset_file` by its `name`, the event hands the handler `_dataset_path`.
    "DIMSEMessage.decode_msg": (DIMSEMessage.decode_msg, "f51c777e841a76be"),
    "DIMSEMessage.message_to_primitive": (DIMSEMessage.message_to_primitive,
                                          "f8f43d34e43450ef"),
    "DIMSEServiceProvider.receive_primitive": (DIMSEServiceProvider.receive_primitive,
                                               "5f99c86b14a15cef"),
    "StorageServiceClass.SCP": (StorageServiceClass.SCP, "63afca7fc6c6e7ee"),
    # dicom/storage_scp.py: StoreSCP.serve is StorageServiceClass.SCP (above) with the
    # abort swap of attempt(), the status handling of validate_status and the trigger
    # of EVT_C_STORE as these do; serve_store picks it where _serve_request would.
    "attempt.__enter__": (attempt.__enter__, "86489363384d03e9"),
    "attempt.__exit__": (attempt.__exit__, "fd73ef3737fd4074"),
    "ServiceClass.validate_status": (ServiceClass.validate_status, "4c92e97ae31a8f1f"),
    "evt.trigger": (evt.trigger, "b97f8a75e8affaa0"),
    # receive.read_pdata (EventDUL._decode_pdu in Sta6): the P-DATA of DT-2 made without
    # P_DATA_TF's items, as its decode and to_primitive make it; the standard handler
    # of EVT_PDU_RECV does nothing for a P-DATA-TF.
    "fsm.DT_2": (fsm.DT_2, "9ec543394e0b49eb"),
    "P_DATA_TF.to_primitive": (P_DATA_TF.to_primitive, "3cba1cd31f03fdf0"),
    "P_DATA_TF._generate_items": (P_DATA_TF._generate_items, "55a5deea47745b72"),
    "_handlers.standard_pdu_recv_handler": (_handlers.standard_pdu_recv_handler,
                                            "916f709ee3e06a74"),
    "_handlers._receive_data_tf": (_handlers._receive_data_tf, "0b6b9cd66ad6dd96"),
    "Event.dataset_path": (Event.dataset_path.fget, "7eba7552ff800249"),
    # BoundedSendQueue: what the DUL does with its to-provider queue.
    "DULServiceProvider.send_pdu": (DULServiceProvider.send_pdu, "7cbce5da8594124e"),
    "DULServiceProvider._process_recv_primitive": (
        DULServiceProvider._process_recv_primitive, "4c0ebbb3e646e35e"),
    # dicom/reactor.py (server.transport: events): the reactors it replaces, the waits it
    # turns into conditions, and what it relies on: the queues and timers the DUL and the
    # DIMSE provider build, the socket check the DUL loop makes, the pause protocol.
    "DULServiceProvider.__init__": (DULServiceProvider.__init__, "c82dafa9438ddf70"),
    "DULServiceProvider.run_reactor": (DULServiceProvider.run_reactor, "e3a10eb3a0931e48"),
    "DULServiceProvider.kill_dul": (DULServiceProvider.kill_dul, "5ceccf8dd01c2072"),
    "DULServiceProvider.stop_dul": (DULServiceProvider.stop_dul, "28a7e0be126e7b30"),
    "DULServiceProvider._is_transport_event": (DULServiceProvider._is_transport_event,
                                               "8725ed03bb8fbdef"),
    "AssociationSocket.ready": (AssociationSocket.ready.fget, "3eb58e3d39dc076d"),
    # dicom/closing.py: Sta13 waits for the peer's close (the check above), and the close
    # that drops unread bytes first; dicom/requestor.py settle_rejection: the race in
    # the requestor's negotiation it corrects.
    "AssociationSocket._shutdown_socket": (AssociationSocket._shutdown_socket,
                                           "e2b2628faa81a578"),
    "TCPServer.shutdown_request": (socketserver.TCPServer.shutdown_request,
                                   "9673c0ac3021d210"),
    "ACSE._negotiate_as_requestor": (ACSE._negotiate_as_requestor, "507959152c5896c6"),
    # dicom/acceptor.py: init_event_association sets what these two set, and
    # handler_table binds what _bind_defaults and bind() would (events._add_handler).
    "Association.__init__": (Association.__init__, "eb07516b8009ad8f"),
    # dicom/connection.py: the server's bind()/unbind() are upstream's, then the
    # handler table of new associations is built again.
    "AssociationServer.bind": (AssociationServer.bind, "c174a2d70c883a43"),
    "AssociationServer.unbind": (AssociationServer.unbind, "12fba1dd07d6d7d1"),
    "Association._bind_defaults": (Association._bind_defaults, "4cada43c3a193724"),
    "Association.bind": (Association.bind, "91eec59479017e5e"),
    "events._add_handler": (events._add_handler, "c6ef805629ffd887"),
    "ServiceUser.__init__": (ServiceUser.__init__, "81bf9cfc3aff80ea"),
    "Association.kill": (Association.kill, "8f9713666a7f4cff"),
    "Association.release": (Association.release, "c7d713502b77d702"),
    "DIMSEServiceProvider.__init__": (DIMSEServiceProvider.__init__, "bbecd186810e7700"),
    "AE._create_socket": (ApplicationEntity._create_socket, "f56bca8888e1ce9f"),
    # EventDUL._decode_pdu: an A-ASSOCIATE-RQ decoded once per distinct proposal; AE-6
    # takes it from _recv_pdu and calls to_primitive() once per association.
    "DULServiceProvider._decode_pdu": (DULServiceProvider._decode_pdu, "fc71dd1bf853e1ce"),
    "A_ASSOCIATE_RQ.to_primitive": (A_ASSOCIATE_RQ.to_primitive, "92cb1a8bedf659e5"),
    "fsm.AE_6": (fsm.AE_6, "385d595ed49432af"),
    # dicom/negotiation.py: a proposal's outcome replayed (what upstream's negotiation
    # leaves on the association; once the acceptor's primitive is set, its user
    # information is read from it), the A-ASSOCIATE-AC encoded ahead of AE-7 (which
    # GuardedStateMachine replaces for it), the accept built by send_accept.
    "fsm.AE_7": (fsm.AE_7, "c62284735836c78a"),
    "ACSE.send_accept": (ACSE.send_accept, "c03855deabefe975"),
    "ServiceUser.user_information": (ServiceUser.user_information.fget, "b10b0366589d5cfc"),
    "ServiceUser.writeable": (ServiceUser.writeable.fget, "23590ca1ce9969c3"),
    # ResponseDIMSE.send_msg: responses encoded directly, byte for byte what these do
    # (tests/unit/test_reactor.py compares the two).
    "DIMSEServiceProvider.send_msg": (DIMSEServiceProvider.send_msg, "a839cf2fb46976d9"),
    "DIMSEMessage.primitive_to_message": (DIMSEMessage.primitive_to_message,
                                          "71fd61d5997f0f0c"),
    "DIMSEMessage.encode_msg": (DIMSEMessage.encode_msg, "73000c902c52832d"),
    # dicom/find_scp.py: EncodedFind._c_find_scp is upstream's loop taking encoded
    # identifiers; serve_find picks its class where _serve_request (above) would pick
    # upstream's, and the SCP methods and the handler wrapper it relies on.
    "ServiceClass._c_find_scp": (ServiceClass._c_find_scp, "da242b908ef4848c"),
    "ServiceClass._wrap_handler": (ServiceClass._wrap_handler, "4322159402f181cd"),
    # EncodedFind.is_cancelled reads the socket (events transport, the DUL run by the
    # association thread) and then asks upstream's check of dimse.cancel_req.
    "ServiceClass.is_cancelled": (ServiceClass.is_cancelled, "fb9acf44b9bd05fe"),
    "QueryRetrieveServiceClass.SCP": (QueryRetrieveServiceClass.SCP, "e59ba54b9071ffc3"),
    "BasicWorklistManagementServiceClass.SCP": (BasicWorklistManagementServiceClass.SCP,
                                                "e34e6118c2ba502e"),
    "sop_class.uid_to_service_class": (sop_class.uid_to_service_class, "88fa4636b8cbaacd"),
    # dicom/store_send.py (FileSending._send_from_file): a C-STORE-RQ from the stored file
    # as send_c_store(path) sends it (tests/unit/test_store_send.py compares the bytes);
    # RawSendStateMachine writes the PDUs DT-1 / AR-7 would build and send; the File
    # Meta is skipped where split_dataset would find its end; the exchange's end is
    # upstream's (context, no response, status).
    "fsm.DT_1": (fsm.DT_1, "82e5c5d4114534fa"),
    "fsm.AR_7": (fsm.AR_7, "9a8d68182bf5c9fd"),
    "DULServiceProvider._send": (DULServiceProvider._send, "a850a7919e68484e"),
    "P_DATA_TF.from_primitive": (P_DATA_TF.from_primitive, "1e84ddf2ecfdc32e"),
    "dsutils.split_dataset": (dsutils.split_dataset, "377ac781c097b81f"),
    "Association._get_valid_context": (Association._get_valid_context, "117a52c2ae6720e0"),
    "Association._check_received_status": (Association._check_received_status,
                                            "364c3ae215b58646"),
    "Association._handle_no_response": (Association._handle_no_response,
                                        "6f3d62518395c3a8"),
    # dicom/retrieve_scp.py: RetrieveSCP._get_scp/_move_scp (pinned above) are upstream's
    # loops with pending responses from a template; they use these as upstream does
    # (ServiceClass.validate_status is pinned above, for dicom/storage_scp.py, too).
    "service_class.attempt": (attempt, "84f10d07058a614c"),
    # dicom/response_read.py: ResponseReadingDUL._read_pdu_data (pinned above) puts a
    # plain C-STORE-RSP on the DIMSE queue as DT-2 and RetrieveDimse would; the UIDs of
    # store_send.PlainStoreResponse go through upstream's setters when first read
    # (fsm.DT_2 is pinned above, for dicom/receive.py, too).
    "DIMSEPrimitive.AffectedSOPClassUID": (DIMSEPrimitive.AffectedSOPClassUID.fset,
                                           "f9bdd6340986b88f"),
    "C_STORE.AffectedSOPInstanceUID": (C_STORE.AffectedSOPInstanceUID.fset,
                                       "26553181105568ff"),
    # dicom/lent_dul.py: a C-MOVE destination's DUL run by the sending thread, which
    # writes the C-STORE-RQ PDUs with AssociationSocket.send as RawSendStateMachine
    # does, runs EventDUL's step (upstream's _process_recv_primitive and
    # _is_transport_event, pinned above) and gives the DUL back before upstream's
    # send_c_store (above), release (above) and abort.
    "AssociationSocket.send": (AssociationSocket.send, "1ea8158c0b51faca"),
    "Association.abort": (Association.abort, "de1cee39dfe396b0"),
}

# The methods that read or set Association._is_paused, which EventReactors turns into a
# condition-backed property: a new one (or one gone) means the pause protocol changed.
PAUSE_USERS = {
    "__init__", "_run_reactor", "_serve_request", "kill", "release", "send_c_echo",
    "send_c_find", "send_c_get", "send_c_move", "send_c_store", "send_n_action",
    "send_n_create", "send_n_delete", "send_n_event_report", "send_n_get", "send_n_set",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_overridden_upstream_source_unchanged(name: str) -> None:
    func, digest = PINNED[name]
    actual = hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]
    assert actual == digest, (
        f"pynetdicom {pynetdicom.__version__} changed {name} (digest {actual}, tested "
        f"{digest}): review the override in src/pacs_server/dicom/")


def test_pause_protocol_users_unchanged() -> None:
    users = {name for name, func in inspect.getmembers(Association, inspect.isfunction)
             if "_is_paused" in inspect.getsource(func)}
    assert users == PAUSE_USERS, (
        f"pynetdicom {pynetdicom.__version__} changed who uses Association._is_paused: "
        f"review EventReactors._is_paused in src/pacs_server/dicom/reactor.py")


def test_pinned_minor_version() -> None:
    assert pynetdicom.__version__.startswith("3.0."), pynetdicom.__version__
