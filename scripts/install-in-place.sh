#!/usr/bin/env bash
# Installs the programs and manual pages into an existing Messaging Server installation, with a
# way back (docs/admin-guide.md, "Install in place"). `make install` / `make uninstall` call it.
#
# install: copies dispatcher, tcp_lmtp_server and tcp_lmtpn_server from BINDIR into
#   DESTDIR/IMTA_BIN, and the manual pages of man/ into DESTDIR/MANDIR/man5 and man8. A file it
#   replaces is kept once as <name>.orig (an existing .orig is never overwritten: it is the
#   original, whatever was installed since) and the new file gets the replaced file's mode and
#   owner; a new file gets 0755 (programs) or 0644 (pages), root:root. Every file is copied to a
#   temporary name in its own directory and renamed over the old one, so a running program is
#   never written in place. The files that had nothing to replace are listed in
#   DESTDIR/IMTA_BIN/.msdispatcher-installed, so that uninstall removes those and nothing else.
#   Then runs the installed `dispatcher --check` (with --tailor TAILOR when given) and prints its
#   exit status and summary line; a failed check does not undo the install (the way back is
#   uninstall), but it is the first thing to fix.
# uninstall: renames each .orig back (its mode and owner are the original's: it is the original
#   file), removes the files the list names, then the list.
#
# Packaged (docs/packaging.md), it is /usr/lib/msdispatcher/install-in-place, beside the
# programs: BINDIR is then that directory and the manual pages are left to the package.
#
# usage: IMTA_BIN=/opt/SUNWmsgsr/lib [DESTDIR=...] [MANDIR=/usr/share/man] [BINDIR=target/dist]
#        [TAILOR=/opt/SUNWmsgsr/config/imta_tailor] scripts/install-in-place.sh install|uninstall
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)
here=$(cd "$self/.." && pwd)
packaged=0
[ -x "$self/dispatcher" ] && packaged=1
programs=(dispatcher tcp_lmtp_server tcp_lmtpn_server)
pages=(man8/dispatcher.8 man8/tcp_lmtp_server.8 man8/tcp_lmtpn_server.8 man5/dispatcher.cnf.5)

die() {
    echo "install-in-place: $*" >&2
    exit 1
}
say() { echo "install-in-place: $*"; }

action=${1:-}
[ "$action" = install ] || [ "$action" = uninstall ] ||
    die "usage: IMTA_BIN=DIR [DESTDIR=...] [MANDIR=...] [BINDIR=...] [TAILOR=...] $0 install|uninstall"
[ -n "${IMTA_BIN:-}" ] ||
    die "IMTA_BIN is not set: name the programs directory of the installation (make $action IMTA_BIN=/opt/SUNWmsgsr/lib)"
destdir=${DESTDIR:-}
bin=$destdir${IMTA_BIN%/}
[ -d "$bin" ] || die "IMTA_BIN $bin is not a directory: nothing was changed"
mandir=$destdir${MANDIR:-/usr/share/man}
if [ "$packaged" -eq 1 ]; then
    bindir=${BINDIR:-$self}
    pages=() # the package installs them under /usr/share/man
else
    bindir=${BINDIR:-$here/target/dist}
fi
manifest=$bin/.msdispatcher-installed
back="make uninstall IMTA_BIN=$IMTA_BIN"
[ "$packaged" -eq 0 ] || back="IMTA_BIN=$IMTA_BIN $self/install-in-place uninstall"

# A file we would replace must be a plain file: a link or a directory at that name is the
# administrator's arrangement, not ours to overwrite.
plain_or_absent() {
    local target=$1
    if [ -L "$target" ] || { [ -e "$target" ] && [ ! -f "$target" ]; }; then
        die "$target is not a regular file (a symbolic link or a directory): nothing was changed; replace it by hand"
    fi
}

# listed TARGET: whether an earlier install put TARGET where nothing was.
listed() {
    [ -e "$manifest" ] && grep -qxF -- "${1#"$destdir"}" "$manifest"
}

# put SOURCE TARGET NEWMODE: the atomic replace described above.
put() {
    local source=$1 target=$2 newmode=$3 dir tmp mode owner
    dir=$(dirname "$target")
    if [ -e "$target" ]; then
        mode=$(stat -c %a "$target")
        owner=$(stat -c %u:%g "$target")
        if [ -e "$target.orig" ]; then
            say "$target: replaced; $target.orig already holds the original and is kept"
        elif listed "$target"; then
            say "$target: replaced (installed new before: no original to keep)"
        else
            # A hard link keeps the very file (contents, mode, owner, times); a copy if the
            # file system has no links.
            ln "$target" "$target.orig" 2>/dev/null || cp -p "$target" "$target.orig"
            say "$target: replaced; the old file is kept as $target.orig"
        fi
    else
        mode=$newmode
        owner=0:0
        echo "${target#"$destdir"}" >>"$manifest"
        say "$target: installed (new)"
    fi
    tmp=$(mktemp "$dir/.$(basename "$target").XXXXXX")
    cp "$source" "$tmp"
    chmod "$mode" "$tmp"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$owner" "$tmp"
    elif [ "$owner" != "$(id -u):$(id -g)" ]; then
        say "$target: not root, so it keeps owner $(id -un) instead of $owner"
    fi
    mv -f -T "$tmp" "$target"
}

# make_dirs DIR: mkdir -p that lists in the manifest each directory it creates (with a trailing
# /), so that uninstall removes them again, deepest first.
make_dirs() {
    local dir=$1 missing=()
    while [ ! -d "$dir" ]; do
        missing=("$dir" "${missing[@]}")
        dir=$(dirname "$dir")
    done
    for dir in "${missing[@]}"; do
        mkdir -m 0755 "$dir"
        echo "${dir#"$destdir"}/" >>"$manifest"
        say "$dir: directory created"
    done
}

install_all() {
    local p page
    for p in "${programs[@]}"; do
        [ -x "$bindir/$p" ] || die "$bindir/$p is missing: build first (make build), or set BINDIR"
        plain_or_absent "$bin/$p"
    done
    for page in ${pages[@]+"${pages[@]}"}; do
        [ -f "$here/man/$(basename "$page")" ] || die "$here/man/$(basename "$page") is missing"
        plain_or_absent "$mandir/$page"
    done
    for p in "${programs[@]}"; do
        put "$bindir/$p" "$bin/$p" 0755
    done
    for page in ${pages[@]+"${pages[@]}"}; do
        make_dirs "$mandir/$(dirname "$page")"
        put "$here/man/$(basename "$page")" "$mandir/$page" 0644
    done
    [ ! -e "$manifest" ] || chmod 0644 "$manifest"

    local check=("$bin/dispatcher" --check) out status summary
    if [ -n "${TAILOR:-}" ]; then
        check=("$bin/dispatcher" --tailor "$TAILOR" --check)
    fi
    say "checking the installation: ${check[*]}"
    status=0
    out=$("${check[@]}" 2>&1) || status=$?
    summary=$(printf '%s\n' "$out" | sed '/^[[:space:]]*$/d' | tail -n 1)
    say "dispatcher --check: exit status $status: ${summary:-no output}"
    if [ "$status" -ne 0 ]; then
        printf '%s\n' "$out" | grep -E 'error' | sed 's/^/install-in-place:   /' || true
        say "the configuration is not usable by the new dispatcher: fix it before starting (${check[*]} says why), or go back with: $back"
    fi
}

# restore TARGET: the .orig back, else remove what we installed new.
restore() {
    local target=$1
    if [ -e "$target.orig" ]; then
        mv -f -T "$target.orig" "$target"
        say "$target: the original is back"
    elif listed "$target"; then
        rm -f -- "$target"
        say "$target: removed (it was new)"
    elif [ -e "$target" ]; then
        say "$target: left alone (no $target.orig, and not installed new by install-in-place)"
    fi
}

uninstall_all() {
    local p page
    for p in "${programs[@]}"; do
        restore "$bin/$p"
    done
    for page in ${pages[@]+"${pages[@]}"}; do
        restore "$mandir/$page"
    done
    if [ -e "$manifest" ]; then
        local dir
        while IFS= read -r dir; do
            rmdir -- "$destdir${dir%/}" 2>/dev/null &&
                say "$destdir${dir%/}: directory removed" ||
                say "$destdir${dir%/}: directory left (not empty)"
        done < <(grep '/$' "$manifest" | tac)
    fi
    rm -f -- "$manifest"
}

case $action in
install) install_all ;;
uninstall) uninstall_all ;;
esac
