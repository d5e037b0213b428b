#!/usr/bin/env bash
# Lays out a self-contained installation under ROOT the way Messaging Server installs one:
# lib/ holds the programs, config/ the configuration (from fixtures/demo/config), log/ the logs,
# store/ the Maildir store and mail/ the mbox spool of the two LMTP services.
# The tailor file gets absolute paths, as an installer writes them, and IMTA_USER=ACCOUNT: the
# account the workers run as (a dispatcher started as root refuses to run them as root).
# Existing configuration in ROOT/config is kept, so an administrator's edits survive another
# `make run` (the account is then the one the kept tailor names).
#
# Run as root, the directories are set up as an installation's are: the store belongs to
# ACCOUNT (the store image writes it as that account) and the spool is 1777 like a typical
# /var/mail (the native image creates each recipient's mailbox as the recipient).
#
# usage: scripts/demo-layout.sh [ROOT [BINDIR [ACCOUNT]]]
#   (defaults: run/, target/dist/ (`make build`), and as root `mailsrv` (the seed's
#   IMTA_USER) when that account exists, else `nobody`; not as root, the user running this)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-$here/run}
bindir=${2:-$here/target/dist}
account=${3:-}
if [ -z "$account" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        account=$(id -un)
    elif getent passwd mailsrv >/dev/null; then
        account=mailsrv
    else
        account=nobody # shared with other daemons: name a dedicated account in production
    fi
fi
mkdir -p "$root/lib" "$root/config" "$root/log" "$root/queue" "$root/store" "$root/mail"
chmod 1777 "$root/mail" # recipients create their own mailboxes (docs/lmtp.md, "The spool's mode")
root=$(cd "$root" && pwd)
for prog in dispatcher tcp_lmtp_server tcp_lmtpn_server; do
    install -m 0755 "$bindir/$prog" "$root/lib/$prog"
done
for f in dispatcher.cnf mappings imta.cnf tcp_lmtpss_option tcp_lmtpsn_option; do
    [ -e "$root/config/$f" ] || cp "$here/fixtures/demo/config/$f" "$root/config/$f"
done
if [ -e "$root/config/imta_tailor" ]; then
    kept=$(sed -n 's/^IMTA_USER=//p' "$root/config/imta_tailor" | tail -n 1)
    account=${kept:-$account}
else
    sed -e "s|@ROOT@|$root|g" -e "s|@USER@|$account|g" \
        "$here/fixtures/demo/config/imta_tailor.in" >"$root/config/imta_tailor"
fi
if [ "$(id -u)" -eq 0 ]; then
    # The workers run as $account: they must reach lib/ and config/.
    chmod 0755 "$root"
    chown "$account:$(id -gn "$account")" "$root/store"
    chmod 0755 "$root/store"
    chmod 1777 "$root/mail"
fi
echo "$root"
