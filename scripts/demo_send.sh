#!/usr/bin/env bash
# Send pydicom's bundled CT_small.dcm to a running server with dcmtk: C-ECHO, then C-STORE.
# Starts nothing: run the server first (`make run` in another terminal).
#
#   scripts/demo_send.sh [HOST [PORT [CALLED_AE]]]     defaults: localhost 11112 PACS
#
# CALLING_AE (environment, default DEMO_SCU) is the AE title we present, which must be
# allowed by access_control.allowed_ae_titles.
set -euo pipefail

host=${1:-localhost}
port=${2:-11112}
called_ae=${3:-PACS}
calling_ae=${CALLING_AE:-DEMO_SCU}

# Debian's dcmtk leaves Nagle's algorithm on unless this is set (each message ~40 ms slower).
export TCP_NODELAY=1

for tool in echoscu storescu; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "demo_send: $tool not found; install dcmtk (apt-get install dcmtk)" >&2
        exit 1
    fi
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$root/.venv/bin/python
if [ ! -x "$python" ]; then
    python=python3
fi
file=$("$python" -c 'from pydicom.data import get_testdata_file; print(get_testdata_file("CT_small.dcm"))')

echo "C-ECHO  $calling_ae -> $called_ae@$host:$port"
echoscu -aet "$calling_ae" -aec "$called_ae" "$host" "$port"
echo "C-STORE $file"
if ! storescu -aet "$calling_ae" -aec "$called_ae" "$host" "$port" "$file"; then
    echo "demo_send: C-STORE failed. Sending the same file twice is refused as a duplicate" \
         "(status 0x0111) unless storage.duplicate_policy is ignore or replace;" \
         "add -v to the storescu line above to see the status." >&2
    exit 1
fi
echo "demo_send: stored CT_small.dcm on $called_ae@$host:$port"
