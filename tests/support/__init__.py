"""The test harness: one server, one SCU, one instance builder, one view of the archive.

Importable as `support.<module>` because pytest puts `tests/` on sys.path (the
`pythonpath` setting in pyproject.toml). Fixtures built on these live in
tests/conftest.py (and tests/e2e/conftest.py for the subprocess servers).

    config     SERVER_AE, FAST_STORAGE, server_config(): a Config rooted in a directory
    server     RunningServer: a PacsApp on its own event loop in a thread
    scu        Scu (echo, store, find, move), GetScu, the requestor race workaround
    scp        StorageScp: a pynetdicom C-MOVE destination that can fail SOP classes;
               start_listener(): a test listener whose stop() takes 50 ms, not 0.5 s
    instances  SOP class UIDs, new_dataset(), bundled_dataset(), DicomFiles, dataset_bytes()
    archive    what an archive directory and its SQLite index hold (stdlib sqlite3)
    index      sqlite_index(): a started IndexRepository on a tmp file; index_record()
    mpps       MPPS N-CREATE/N-SET datasets, step_repository() on an index file
    worklist   MWL items and identifiers, find() and findscu_w(), .wl files,
               worklist_repository() on an index file
    dcmtk      finding dcmtk, require_dcmtk(), findscu/movescu/getscu runs, Storescp
    postgres   PostgresCluster, a throw-away PostgreSQL server
    http       the HTTP side: base_url(), http_get(), http_call(), metric(), TOKEN
    polling    wait_until(), free_port(), port_open()
    commitment a Storage Commitment requester: N-ACTION, its own listener for reports
    security   a throw-away PKI, TLS and bound-address clients, raw PDUs and sockets
    fuzz_pdus  the socket fuzz harness against a server process (scripts/fuzz-sockets)
    fuzz_targets  atheris targets for our parsers, their seeds and saved cases;
               fuzz_atheris runs one under atheris (scripts/fuzz-atheris)
    mutations  seeded mutations of pydicom's files, dcmdump's verdict on each
"""
