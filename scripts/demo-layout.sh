#!/usr/bin/env bash
# Lays out a self-contained installation under ROOT the way Messaging Server installs one:
# lib/ holds the programs, config/ the configuration (from fixtures/demo/config), log/ the logs,
# store/ the Maildir store and mail/ the mbox spool of the two LMTP services.
# The tailor file gets absolute paths, as an installer writes them. Existing configuration in
# ROOT/config is kept, so an administrator's edits survive another `make run`.
#
# usage: scripts/demo-layout.sh [ROOT [BINDIR]]   (defaults: run/, target/release/)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-$here/run}
bindir=${2:-$here/target/release}
mkdir -p "$root/lib" "$root/config" "$root/log" "$root/queue" "$root/store" "$root/mail"
chmod 1777 "$root/mail" # recipients create their own mailboxes (docs/lmtp.md, "The spool's mode")
root=$(cd "$root" && pwd)
for prog in dispatcher tcp_lmtp_server tcp_lmtpn_server; do
    install -m 0755 "$bindir/$prog" "$root/lib/$prog"
done
for f in dispatcher.cnf mappings imta.cnf tcp_lmtpss_option tcp_lmtpsn_option; do
    [ -e "$root/config/$f" ] || cp "$here/fixtures/demo/config/$f" "$root/config/$f"
done
[ -e "$root/config/imta_tailor" ] ||
    sed "s|@ROOT@|$root|g" "$here/fixtures/demo/config/imta_tailor.in" >"$root/config/imta_tailor"
echo "$root"
