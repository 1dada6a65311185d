"""pacsctl: steer a running pacs_server through its admin API.

    pacsctl [--url URL --token TOKEN | --config FILE] [--json] COMMAND ...

The URL and token come from --url/--token, else $PACSCTL_URL/$PACSCTL_TOKEN, else the
server's configuration file (--config: monitoring.host/metrics_port and admin.token or
admin.token_file). Exit codes: 0 done, 1 refused or failed (one line on stderr, the
server's reason), 2 usage or configuration error; `verify` exits 1 when it found
problems.

`pacsctl [--config FILE] worklist ...` and `pacsctl [--config FILE] mpps ...` work on the
index database the configuration names, without the API, exactly as `pacs_server
worklist ...` and `pacs_server mpps ...` (the older spellings, kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from pacs_server import __version__
from pacs_server.pacsctl.client import ApiError, Client
from pacs_server.pacsctl.render import Progress, block, size, table

EXIT_FAILED = 1
EXIT_USAGE = 2
# Commands on the index database itself, run by pacs_server's own command line.
LOCAL_COMMANDS = {"worklist": "manage Modality Worklist items (as `pacs_server worklist`)",
                  "mpps": "list or show procedure steps (as `pacs_server mpps`)"}
_VALUED_OPTIONS = ("--url", "--token", "--config")
BROWSE_COLUMNS = {
    "patients": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                 "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"),
    "studies": ("PatientID", "PatientName", "StudyDate", "AccessionNumber",
                "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyInstanceUID"),
    "series": ("PatientID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances", "SeriesInstanceUID"),
    "instances": ("PatientID", "InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}


def assoc_id(value: str) -> str:
    """An association id as /status lists it: 7, or 2-7 (association 7 of worker 2)."""
    if not re.fullmatch(r"[1-9][0-9]{0,17}(-[1-9][0-9]{0,17})?", value):
        raise argparse.ArgumentTypeError(f"not an association id: {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacsctl", description="Steer a running pacs_server.")
    p.add_argument("--url", help="HTTP side of the server, e.g. http://127.0.0.1:9110")
    p.add_argument("--token", help="admin bearer token")
    p.add_argument("--config", metavar="FILE", help="the server's YAML file (URL and token)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--version", action="version", version=f"pacsctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="version, uptime, state, associations, storage")
    a = sub.add_parser("associations", help="live associations (or one in detail)")
    a.add_argument("id", nargs="?", type=assoc_id)
    sub.add_parser("disconnect", help="abort a live association").add_argument(
        "id", type=assoc_id)
    sub.add_parser("pause", help="refuse new associations (live ones continue)")
    sub.add_parser("resume", help="accept new associations again")
    for level in BROWSE_COLUMNS:
        b = sub.add_parser(level, help=f"browse {level} in the index")
        b.add_argument("--patient-id")
        b.add_argument("--name", help="patient name, * and ? wildcards")
        b.add_argument("--date", help="study date YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        b.add_argument("--modality")
        b.add_argument("--accession")
        b.add_argument("--study-uid")
        b.add_argument("--series-uid")
        b.add_argument("--offset", type=int, default=0)
        b.add_argument("--limit", type=int, default=50)
    sub.add_parser("stats", help="counts, bytes per modality and per day, top senders")
    v = sub.add_parser("verify", help="index against files; --repair fixes what it can")
    v.add_argument("--repair", action="store_true")
    sub.add_parser("reindex", help="import DICOM files from a directory on the server"
                   ).add_argument("directory")
    sub.add_parser("backup", help="online copy of the SQLite index to a new file on the "
                   "server").add_argument("destination")
    w = sub.add_parser("watch", help="live feed of association events")
    w.add_argument("--count", type=int, default=0, help="stop after N events")
    ae = sub.add_parser("ae", help="allowed calling AE titles")
    ae.add_argument("action", choices=["list", "add", "remove"])
    ae.add_argument("ae_title", nargs="?")
    ae.add_argument("--host", default="", help="only from this address")
    peers = sub.add_parser("peers", help="C-MOVE destinations")
    peers.add_argument("action", choices=["list", "add", "remove"])
    peers.add_argument("ae_title", nargs="?")
    peers.add_argument("host", nargs="?")
    peers.add_argument("port", nargs="?", type=int)
    for name, text in LOCAL_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False).add_argument(
            "args", nargs=argparse.REMAINDER)
    return p


def run_local(argv: Sequence[str]) -> int | None:
    """`worklist ...` / `mpps ...` through pacs_server's command line, with pacsctl's
    --config (and --json for mpps); None when the command is another one."""
    config: list[str] = []
    json_flag: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        option, _, value = argv[i].partition("=")
        if option in _VALUED_OPTIONS and not value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            i += 1
        if option == "--config":
            config = ["--config", value]
        elif option == "--json":
            json_flag = ["--json"]
        i += 1
    if i >= len(argv) or argv[i] not in LOCAL_COMMANDS:
        return None
    from pacs_server import cli

    command, rest = argv[i], list(argv[i + 1:])
    if command == "worklist":
        return cli.main([*config, "worklist", *rest])
    return cli.main(["mpps", *rest, *config, *json_flag])


def connection(args: argparse.Namespace) -> Client:
    """The client from the options, the environment or the server's config file."""
    url = args.url or os.environ.get("PACSCTL_URL", "")
    token = args.token or os.environ.get("PACSCTL_TOKEN", "")
    if args.config:
        from pacs_server.admin_token import read_token
        from pacs_server.config import load_config

        cfg = load_config(args.config)
        if not url:
            if not cfg.monitoring.serves:
                raise ValueError(f"{args.config}: the HTTP side is off (monitoring)")
            host = cfg.monitoring.bind_host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
            url = f"http://{host}:{cfg.monitoring.metrics_port}"
        token = token or read_token(cfg)
    if not url:
        raise ValueError("no server: give --url, --config or set PACSCTL_URL")
    return Client(url, token)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    local = run_local(argv)
    if local is not None:
        return local
    args = build_parser().parse_args(argv)
    try:
        client = connection(args)
    except Exception as exc:  # ConfigError, StartupError (token file), ValueError
        print(f"pacsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](client, args)
    except ApiError as exc:
        where = f"{exc.status} " if exc.status else ""
        print(f"pacsctl: {where}{exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 0


def _out(args: argparse.Namespace, data: Any) -> bool:
    """Print JSON and return True with --json (the caller prints tables otherwise)."""
    if args.json:
        print(json.dumps(data, indent=2))
    return bool(args.json)


# ------------------------------------------------------------------------ commands
def cmd_status(c: Client, args: argparse.Namespace) -> int:
    s = c.get("/api/status")
    if _out(args, s):
        return 0
    storage = s["storage"]
    block({"version": s["version"], "uptime": f"{s['uptime_s']} s", "AE title": s["ae_title"],
           "ports": f"dicom {s['ports']['dicom']}, http {s['ports']['http']}",
           "state": s["state"], "associations": len(s["associations"]),
           "totals": s["totals"],
           "storage": f"{storage.get('instances', '?')} instances, "
                      f"{size(storage.get('bytes', 0))}, {size(storage['free_bytes'])} free",
           "database": "ok" if s["database"]["healthy"] else s["database"].get("error")})
    return 0


def cmd_associations(c: Client, args: argparse.Namespace) -> int:
    if args.id is None:
        rows = c.get("/api/associations")["associations"]
        if not _out(args, rows):
            table(rows, ("id", "peer", "calling_ae", "called_ae", "since", "operations_total",
                         "last_operation", "bytes_received"),
                  ("id", "peer", "calling", "called", "since", "ops", "last", "bytes"))
        return 0
    d = c.get(f"/api/associations/{args.id}")
    if _out(args, d):
        return 0
    block({k: d.get(k, "") for k in ("id", "peer", "calling_ae", "called_ae", "since",
                                      "max_pdu", "operations", "failures", "bytes_received")})
    print("\naccepted presentation contexts:")
    table(d.get("contexts", []), ("id", "sop_class_name", "transfer_syntax_name", "scu_role",
                                  "scp_role"), ("id", "sop class", "transfer syntax", "scu",
                                                "scp"))
    print("\noperations:")
    table(d.get("recent_operations", []), ("at", "operation", "status", "bytes"))
    return 0


def cmd_disconnect(c: Client, args: argparse.Namespace) -> int:
    r = c.call("DELETE", f"/api/associations/{args.id}")
    if not _out(args, r):
        print(f"association {args.id} aborted")
    return 0


def cmd_pause(c: Client, args: argparse.Namespace) -> int:
    r = c.call("POST", f"/api/{args.command}")
    if not _out(args, r):
        print("paused: new associations are refused" if r["paused"]
              else "accepting new associations")
    return 0


def cmd_browse(c: Client, args: argparse.Namespace) -> int:
    query = {"patient_id": args.patient_id, "name": args.name, "date": args.date,
             "modality": args.modality, "accession": args.accession,
             "study_uid": args.study_uid, "series_uid": args.series_uid,
             "offset": args.offset, "limit": args.limit}
    page = c.get(f"/api/browse/{args.command}", **query)
    if _out(args, page):
        return 0
    columns = BROWSE_COLUMNS[args.command]
    if any("viewer_url" in row for row in page["rows"]):
        for row in page["rows"]:
            row["viewer"] = c.url + row.get("viewer_url", "")
        columns = (*columns, "viewer")
    table(page["rows"], columns)
    if page["more"]:
        print(f"... more: --offset {page['offset'] + len(page['rows'])}")
    return 0


def cmd_stats(c: Client, args: argparse.Namespace) -> int:
    s = c.get("/api/stats")
    if _out(args, s):
        return 0
    block({**s["counts"], "bytes": size(s["counts"]["bytes"])})
    for title, key, first in (("per modality", "by_modality", "modality"),
                              ("per day received", "by_day", "day"),
                              ("top senders", "top_senders", "ae_title")):
        print(f"\n{title}:")
        table(s[key], (first, "instances", "bytes"))
    return 0


def _streamed(c: Client, path: str, label: str, body: dict[str, Any] | None = None,
              **query: Any) -> dict[str, Any]:
    bar = Progress(label)
    report: dict[str, Any] = {}
    for record in c.stream(path, body, **query):
        if record.get("done"):
            report = record
        else:
            bar.update(record.get("checked", 0), record.get("total", 0))
    bar.finish()
    return report


def cmd_verify(c: Client, args: argparse.Namespace) -> int:
    r = _streamed(c, "/api/verify", "verify", repair="1" if args.repair else "")
    if not _out(args, r):
        print(f"checked {r['checked']}: {len(r['missing'])} missing, "
              f"{len(r['truncated'])} truncated, {len(r['unindexed'])} unindexed")
        for m in r["missing"]:
            print(f"  missing    {m['path']}  ({m['sop_instance_uid']})")
        for t in r["truncated"]:
            print(f"  truncated  {t['path']}  ({t['file_size']} of {t['indexed_size']} bytes)")
        for u in r["unindexed"]:
            print(f"  unindexed  {u['path']}")
        if args.repair:
            print(f"repair: {len(r['reindexed'])} re-indexed, {r['marked']} marked missing, "
                  f"{len(r['not_reindexed'])} could not be re-indexed")
    return 0 if r.get("ok") or args.repair else EXIT_FAILED


def cmd_reindex(c: Client, args: argparse.Namespace) -> int:
    r = _streamed(c, "/api/reindex", "reindex", {"directory": os.path.abspath(args.directory)})
    if not _out(args, r):
        print(f"{r['files']} files: {r['stored']} stored, {r['already_stored']} already "
              f"stored, {r['duplicates']} duplicates, {r['skipped']} not DICOM, "
              f"{r['failed']} failed")
        for p in r["problems"]:
            print(f"  {p['path']}: {p['error']}")
    return 0


def cmd_backup(c: Client, args: argparse.Namespace) -> int:
    r = c.call("POST", "/api/backup", {"destination": os.path.abspath(args.destination)})
    if not _out(args, r):
        print(f"backup written: {r['destination']} ({size(r['bytes'])}, {r['seconds']} s)")
    return 0


def cmd_watch(c: Client, args: argparse.Namespace) -> int:
    seen = 0
    for event in c.events():
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            extra = {k: v for k, v in event.items()
                     if k not in ("kind", "time", "assoc", "peer", "calling_ae", "called_ae")}
            print(f"{event.get('time', '')} {event['kind']:<9} #{event.get('assoc', '-')} "
                  f"{event.get('calling_ae', '')}@{event.get('peer', '')} "
                  f"{' '.join(f'{k}={v}' for k, v in extra.items())}".rstrip(), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


def cmd_ae(c: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = c.get("/api/ae")["ae_titles"]
        if not _out(args, rows):
            table(rows, ("ae_title", "host", "origin"))
        return 0
    if not args.ae_title:
        print("pacsctl: ae add/remove needs an AE title", file=sys.stderr)
        return EXIT_USAGE
    r = c.call("POST" if args.action == "add" else "DELETE", "/api/ae",
               {"ae_title": args.ae_title, "host": args.host})
    if not _out(args, r):
        print(f"{args.action}: {r['ae_title']}" + (f" from {r['host']}" if r["host"] else ""))
    return 0


def cmd_peers(c: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = c.get("/api/peers")["peers"]
        if not _out(args, rows):
            table(rows, ("ae_title", "host", "port", "origin"))
        return 0
    if not args.ae_title or (args.action == "add" and (not args.host or not args.port)):
        print("pacsctl: peers add AE_TITLE HOST PORT | peers remove AE_TITLE", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"ae_title": args.ae_title}
    if args.action == "add":
        body.update(host=args.host, port=args.port)
    r = c.call("POST" if args.action == "add" else "DELETE", "/api/peers", body)
    if not _out(args, r):
        print(f"{args.action}: {r['ae_title']}")
    return 0


COMMANDS = {
    "status": cmd_status, "associations": cmd_associations, "disconnect": cmd_disconnect,
    "pause": cmd_pause, "resume": cmd_pause, "stats": cmd_stats, "verify": cmd_verify,
    "reindex": cmd_reindex, "backup": cmd_backup, "watch": cmd_watch, "ae": cmd_ae,
    "peers": cmd_peers, **{level: cmd_browse for level in BROWSE_COLUMNS},
}
