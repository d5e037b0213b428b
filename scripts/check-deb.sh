#!/usr/bin/env bash
# Checks a built msdispatcher package the way an administrator meets it (docs/packaging.md):
#
#  1. its contents: every path, type, mode and owner, against fixtures/package/contents;
#  2. its control data: the name, the dependencies, the conffiles, the maintainer scripts;
#  3. lintian: no error, and no warning but those docs/packaging.md accepts;
#  4. on a scratch system with a real systemd: an overlay of this very system (its files are
#     the lower layer, every change goes to a tmpfs) in a private mount namespace, booted as a
#     container by systemd-nspawn with a network of its own (loopback only), so nothing here
#     is changed and no port here is used. There, with the mail account removed first:
#     - `dpkg -i` creates the account, and leaves the unit disabled and inactive;
#     - the unit passes `systemd-analyze verify`;
#     - the steps of docs/packaging.md "A new store host" (read from that file, so the page
#       cannot drift) end in `systemctl enable --now`, which with Type=notify returns once the
#       dispatcher said READY=1;
#     - mail goes over LMTP into a Maildir (as mailsrv) and into /var/mail, with lines in
#       mail.log_current, so the sandboxing leaves the store, the spool and IMTA_LOG writable;
#     - `dispatcher --status` reaches the control socket in IMTA_LOG and names the main pid;
#     - `systemctl reload` applies a good configuration, and refuses (fails on) one without its mappings
#       file while the service goes on serving (STATUS= says which);
#     - a SIGKILL of the dispatcher is restarted (Restart=on-failure), a restart into an
#       unusable configuration exits 78 and is not retried (RestartPreventExitStatus=78),
#       and the journal names the file, line and column of the error;
#     - `logrotate -f` with the packaged snippet rotates mail.log_current, the dispatcher
#       makes a new one, and the next delivery is in it;
#     - `systemctl stop` while a session is in its DATA lets that session finish with 250
#       (KillMode=mixed: the dispatcher drains its workers) and leaves no process;
#     - `dpkg -r` removes the programs and the unit and keeps the conffile, the account, the
#       configuration and the mail; `dpkg -P` removes the conffile.
#
# usage: scripts/check-deb.sh PATH.deb   (as root: dpkg, mounts and systemd-nspawn need it)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "check-deb: $*"; }
fail() {
    echo "check-deb: FAIL: $*" >&2
    exit 1
}

# Lintian tags accepted, each with its reason in docs/packaging.md ("lintian"); an extended
# regular expression each, naming the file where the tag is about one.
accepted_tags=(
    initial-upload-closes-no-bugs
    'shared-library-lacks-prerequisites \[usr/lib/msdispatcher/tcp_lmtp_server\]'
)

# The scratch system: its tmpfs, its root, systemd-nspawn's pid and the container's init (the
# EXIT trap stops the container by these pids and unmounts).
scratch= root= nspawn= init=
if [ "${1:-}" = --inside ]; then
    inside=1
    shift
else
    inside=0
fi
deb=${1:?usage: scripts/check-deb.sh PATH.deb}
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
[ -f "$deb" ] || fail "$deb: no such package (make deb builds it)"

outside() {
    [ "$(id -u)" -eq 0 ] || fail "run as root (dpkg, chroot and mounts need it)"

    # 1. Contents.
    local listing expected
    listing=$(dpkg-deb -c "$deb" | awk '{ sub(/ -> .*/, ""); print $1, $2, $6 }' | sort -k3)
    expected=$(grep -v '^#' "$here/fixtures/package/contents" | sort -k3)
    if [ "$listing" != "$expected" ]; then
        diff <(echo "$expected") <(echo "$listing") | sed 's/^/check-deb:   /' >&2 || true
        fail "the package's contents differ from fixtures/package/contents (< expected, > built)"
    fi
    say "ok: contents, modes and owners ($(echo "$listing" | wc -l) entries)"
    local tmp
    tmp=$(mktemp -d)
    dpkg-deb -x "$deb" "$tmp"
    for prog in dispatcher tcp_lmtp_server tcp_lmtpn_server; do
        file -b "$tmp/usr/lib/msdispatcher/$prog" | grep -q 'stripped' ||
            fail "usr/lib/msdispatcher/$prog is not an executable"
        file -b "$tmp/usr/lib/msdispatcher/$prog" | grep -q 'not stripped' &&
            fail "usr/lib/msdispatcher/$prog is not stripped"
    done
    # The store image is linked statically; the two that look accounts up (NSS) are not
    # (Makefile, "build").
    file -b "$tmp/usr/lib/msdispatcher/tcp_lmtp_server" | grep -q 'static-pie linked' ||
        fail "usr/lib/msdispatcher/tcp_lmtp_server is not statically linked (make build)"
    for prog in dispatcher tcp_lmtpn_server; do
        file -b "$tmp/usr/lib/msdispatcher/$prog" | grep -q 'dynamically linked' ||
            fail "usr/lib/msdispatcher/$prog is not dynamically linked: it looks accounts up"
    done
    "$tmp/usr/lib/msdispatcher/dispatcher" --help >/dev/null ||
        fail "the packaged dispatcher does not run (--help)"
    rm -rf "$tmp"
    say "ok: the programs are stripped executables that run"

    # 2. Control data.
    local field
    field() { dpkg-deb -f "$deb" "$1"; }
    [ "$(field Package)" = msdispatcher ] || fail "Package is $(field Package)"
    field Depends | grep -qw adduser || fail "Depends lacks adduser (the postinst uses it)"
    field Depends | grep -qw libc6 || fail "Depends lacks libc6 (\$auto did not run)"
    [ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = /etc/logrotate.d/msdispatcher ] ||
        fail "conffiles is not exactly /etc/logrotate.d/msdispatcher"
    for script in postinst prerm postrm; do
        dpkg-deb --ctrl-tarfile "$deb" | tar -xO "./$script" | sh -n ||
            fail "$script is not valid sh"
    done
    say "ok: control: $(field Package) $(field Version) $(field Architecture); Depends: $(field Depends)"

    # 3. lintian.
    local tags unexpected lint lint_status=0
    command -v lintian >/dev/null || fail "lintian is missing (scripts/install-test-deps.sh)"
    lint=$(lintian --no-tag-display-limit "$deb" 2>&1) || lint_status=$?
    # 0: nothing at the fail-on level, 1: tags at it, 2 and up: lintian itself failed.
    [ "$lint_status" -le 1 ] || fail "lintian did not run (exit $lint_status): $lint"
    tags=$(printf '%s\n' "$lint" | grep -E '^[EWX]: ' || true)
    unexpected=$(printf '%s\n' "$tags" | grep -v -E ": ($(
        IFS='|'
        echo "${accepted_tags[*]}"
    ))( |\$)" | sed '/^$/d' || true)
    if [ -n "$unexpected" ]; then
        printf '%s\n' "$unexpected" | sed 's/^/check-deb:   /' >&2
        fail "lintian reports what docs/packaging.md does not accept"
    fi
    say "ok: lintian: no error; accepted: ${tags:-nothing}"

    # 4. The scratch root.
    command -v systemd-nspawn >/dev/null || fail "systemd-nspawn is missing (Debian: systemd-container)"
    unshare --mount --propagation private --fork "$0" --inside "$deb"
}

inside() {
    # Only in the mount namespace outside() made: here the mounts would be this system's.
    [ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] ||
        fail "--inside is for the private mount namespace that the check itself makes"
    scratch=$(mktemp -d /tmp/check-deb-root.XXXXXX)
    root=$scratch/root
    trap stop_container EXIT
    mount -t tmpfs -o size=1g tmpfs "$scratch"
    mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
    # The overlay holds / alone: a separate /usr, /var, /opt or /etc would be empty in it.
    for dir in /usr /var /opt /etc /lib; do
        [ "$(stat -c %d "$dir")" = "$(stat -c %d /)" ] ||
            fail "$dir is a file system of its own: the scratch system (an overlay of /) would lack it"
    done
    mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$root"
    # A machine of its own (not this one's id, nor the services this one has enabled), with
    # neither the package nor the mail account, even if this system has them.
    # Done in a chroot, so that an absolute symbolic link (/opt -> /data/opt) resolves inside
    # the overlay, never on this system.
    chroot "$root" sh -ec '
        systemd-id128 new >/etc/machine-id
        find /etc/systemd/system -path "*.wants/*" \( -name "*.service" -o -name "*.timer" \
            -o -name "*.socket" \) ! -path "*/sysinit.target.wants/*" ! -name "dbus.socket" \
            ! -name "systemd-journald*.socket" -delete
        rm -rf /opt/SUNWmsgsr /var/opt/SUNWmsgsr /var/mail/alice
        cat >/var/tmp/msdispatcher.deb' <"$deb"
    systemd-nspawn --quiet --register=no --keep-unit --link-journal=no --private-network \
        -D "$root" -b --console=pipe >"$scratch/console.log" 2>&1 </dev/null &
    nspawn=$!
    local state=
    for _ in $(seq 1 300); do
        init=$(pgrep -P "$nspawn" -x systemd | head -n 1 || true)
        if [ -n "$init" ]; then
            state=$(in_root systemctl is-system-running 2>/dev/null || true)
            case $state in running | degraded) break ;; esac
        fi
        kill -0 "$nspawn" 2>/dev/null || fail "the container did not boot: $(tail -n 5 "$scratch/console.log")"
        sleep 0.2
    done
    case $state in running | degraded) ;; *) fail "the container's systemd is ${state:-not up}" ;; esac
    say "ok: a scratch system booted with systemd $(in_root systemctl --version | head -n 1 | cut -d' ' -f2) ($state)"

    if in_root dpkg -s msdispatcher >/dev/null 2>&1; then
        in_root dpkg -P msdispatcher >/dev/null
    fi
    if in_root getent passwd mailsrv >/dev/null; then
        in_root userdel mailsrv
    fi
    in_root getent passwd mailsrv >/dev/null && fail "cannot remove mailsrv from the scratch system"

    # Installing.
    in_root dpkg -i /var/tmp/msdispatcher.deb >"$scratch/dpkg-i.log" 2>&1 ||
        fail "dpkg -i failed: $(tail -n 5 "$scratch/dpkg-i.log")"
    [ "$(in_root dpkg-query -W -f '${Status}' msdispatcher)" = "install ok installed" ] ||
        fail "dpkg does not say msdispatcher is installed"
    local account
    account=$(in_root getent passwd mailsrv) || fail "the postinst did not create the account mailsrv"
    IFS=: read -r _ _ uid gid _ home shell <<<"$account"
    [ "$uid" -lt 1000 ] || fail "mailsrv is not a system account (uid $uid)"
    [ "$shell" = /usr/sbin/nologin ] || fail "mailsrv can log in (shell $shell)"
    [ ! -e "$root$home" ] || fail "mailsrv's home $home exists"
    [ "$(in_root getent group mail | cut -d: -f3)" = "$gid" ] ||
        fail "mailsrv's group is not mail (gid $gid)"
    say "ok: dpkg -i: installed; mailsrv created (uid $uid, group mail, $shell, home $home)"
    [ "$(in_root systemctl is-enabled msdispatcher 2>&1 || true)" = disabled ] ||
        fail "after dpkg -i the unit is $(in_root systemctl is-enabled msdispatcher 2>&1), not disabled"
    [ "$(in_root systemctl is-active msdispatcher 2>&1 || true)" = inactive ] ||
        fail "after dpkg -i the unit is $(in_root systemctl is-active msdispatcher 2>&1), not inactive"
    if in_root pgrep -f /usr/lib/msdispatcher/ >/dev/null; then
        fail "installing started a program of the package: $(in_root pgrep -af /usr/lib/msdispatcher/)"
    fi
    say "ok: systemd knows the unit (loaded), disabled and inactive: nothing started"
    in_root dpkg -i /var/tmp/msdispatcher.deb >"$scratch/dpkg-i2.log" 2>&1 ||
        fail "installing again (the account exists) failed: $(tail -n 5 "$scratch/dpkg-i2.log")"
    say "ok: dpkg -i again, with the account there"
    local verify
    verify=$(in_root systemd-analyze verify /lib/systemd/system/msdispatcher.service 2>&1) ||
        fail "systemd-analyze verify: $verify"
    [ -z "$verify" ] || fail "systemd-analyze verify says: $verify"
    say "ok: systemd-analyze verify: the unit is clean"

    # The administrator's steps for a new store host, as docs/packaging.md gives them.
    local steps
    steps=$(sed -n '/^<!-- new-store-host: begin -->$/,/^<!-- new-store-host: end -->$/p' \
        "$here/docs/packaging.md" | sed -n '/^```sh$/,/^```$/p' | sed '/^```/d')
    [ -n "$steps" ] || fail "docs/packaging.md has no new-store-host steps between its markers"
    printf '%s\n' "$steps" | grep -q '^systemctl enable --now msdispatcher$' ||
        fail "the new-store-host steps of docs/packaging.md do not start the unit"
    printf '%s\n' "$steps" | in_root sh -c 'cat >/var/tmp/new-store-host.sh'
    in_root timeout 60 sh -e /var/tmp/new-store-host.sh >"$scratch/steps.log" 2>&1 ||
        fail "the new-store-host steps of docs/packaging.md failed: $(tail -n 5 "$scratch/steps.log")"
    expect_active "after the steps of docs/packaging.md"
    local main first
    main=$(unit MainPID)
    [ "$(in_root ps -o comm= -p "$main")" = dispatcher ] || fail "the unit's main process is not the dispatcher"
    first=$main
    say "ok: the steps of docs/packaging.md \"A new store host\" ($(printf '%s\n' "$steps" | wc -l) commands): active, main pid $main, workers $(in_root pgrep -c -P "$main"); STATUS=$(unit StatusText)"

    local log=/var/opt/SUNWmsgsr/log
    deliver 2225 "check-deb store"
    deliver 2226 "check-deb native"
    in_root grep -rqs "check-deb store" /opt/SUNWmsgsr/store/alice/new/ ||
        fail "the message is not in /opt/SUNWmsgsr/store/alice/new/"
    in_root grep -qs "check-deb native" /var/mail/alice || fail "the message is not in /var/mail/alice"
    [ "$(in_root stat -c %U /opt/SUNWmsgsr/store/alice)" = mailsrv ] ||
        fail "the Maildir is not mailsrv's: $(in_root stat -c %U /opt/SUNWmsgsr/store/alice)"
    [ "$(in_root grep -c 'to=<alice' "$log/mail.log_current")" -ge 2 ] ||
        fail "mail.log_current lacks the two deliveries: $(in_root cat "$log/mail.log_current" 2>&1)"
    say "ok: under the unit's sandbox: stored into a Maildir as mailsrv and into /var/mail; both in mail.log_current"

    # The control socket answers the packaged program; its status names the unit's main pid.
    status=$(in_root env IMTA_TAILOR=/opt/SUNWmsgsr/config/imta_tailor \
        /usr/lib/msdispatcher/dispatcher --status 2>&1) || fail "dispatcher --status: $status"
    case "$status" in
        *"pid $(unit MainPID),"*) ;;
        *) fail "dispatcher --status does not name the main pid $(unit MainPID): $status" ;;
    esac
    say "ok: dispatcher --status over the control socket: $(printf '%s' "$status" | head -n 1)"

    # Reloads: a good one applied, one without the mappings file refused.
    in_root systemctl reload msdispatcher || fail "systemctl reload failed"
    wait_status "configuration reloaded" "a good reload"
    say "ok: systemctl reload: STATUS=$(unit StatusText)"
    in_root mv /opt/SUNWmsgsr/config/mappings /opt/SUNWmsgsr/config/mappings.away
    # ExecReload is `dispatcher --reload`, which waits for the result: a refused reload fails.
    if in_root systemctl reload msdispatcher; then
        fail "systemctl reload without the mappings file succeeded (it must report the refusal)"
    fi
    wait_status "reload refused" "a reload without the mappings file"
    expect_active "after a refused reload"
    [ "$(unit MainPID)" = "$main" ] || fail "a refused reload changed the main process"
    deliver 2225 "after a refused reload"
    say "ok: a reload without the mappings file: refused, still serving; STATUS=$(unit StatusText)"
    in_root mv /opt/SUNWmsgsr/config/mappings.away /opt/SUNWmsgsr/config/mappings

    # A killed dispatcher is started again; an unusable configuration is not retried.
    in_root kill -KILL "$main"
    for _ in $(seq 1 100); do
        [ "$(unit NRestarts)" = 1 ] && [ "$(unit ActiveState)" = active ] && break
        sleep 0.1
    done
    [ "$(unit NRestarts)" = 1 ] || fail "a SIGKILLed dispatcher was not restarted (NRestarts=$(unit NRestarts))"
    expect_active "after a SIGKILL and Restart=on-failure"
    main=$(unit MainPID)
    [ "$main" != "$first" ] || fail "the restarted unit has the old main pid"
    deliver 2225 "after a restart"
    say "ok: SIGKILL of the dispatcher: restarted (NRestarts=1, main pid $main), serving"
    in_root cp -p /opt/SUNWmsgsr/config/dispatcher.cnf /var/tmp/dispatcher.cnf.good
    in_root sed -i 's/^MAX_PROCS=.*/MAX_PROCS=many/' /opt/SUNWmsgsr/config/dispatcher.cnf
    if in_root systemctl restart msdispatcher 2>/dev/null; then
        fail "systemctl restart into a dispatcher.cnf with MAX_PROCS=many succeeded"
    fi
    [ "$(unit ExecMainStatus)" = 78 ] || fail "the dispatcher exited $(unit ExecMainStatus), not 78 (EX_CONFIG)"
    sleep 3 # RestartSec=2: long enough for a restart that must not come
    [ "$(unit ActiveState)" = failed ] || fail "after exit 78 the unit is $(unit ActiveState), not failed"
    [ "$(unit NRestarts)" = 0 ] || fail "after exit 78 the unit was restarted (NRestarts=$(unit NRestarts))"
    say "ok: a restart into an unusable configuration: exit 78, failed, not retried; STATUS=$(unit StatusText)"
    local journal
    journal=$(in_root journalctl -u msdispatcher --no-pager)
    grep -q 'dispatcher.cnf:[0-9]*:[0-9]*: MAX_PROCS=many' <<<"$journal" ||
        fail "the journal does not name the file, line and column of the error"
    in_root cp -p /var/tmp/dispatcher.cnf.good /opt/SUNWmsgsr/config/dispatcher.cnf
    in_root systemctl start msdispatcher || fail "systemctl start after the fix failed"
    expect_active "after the fix"
    main=$(unit MainPID)

    # logrotate with the packaged snippet.
    in_root logrotate -f /etc/logrotate.d/msdispatcher >"$scratch/logrotate.log" 2>&1 ||
        fail "logrotate -f failed: $(cat "$scratch/logrotate.log")"
    in_root test -s "$log/mail.log_current.1" || fail "logrotate did not move mail.log_current"
    for _ in $(seq 1 50); do
        in_root test -e "$log/mail.log_current" && break
        sleep 0.1
    done
    in_root test -e "$log/mail.log_current" || fail "no new mail.log_current after the rotation (SIGUSR1)"
    deliver 2225 "after rotation"
    in_root grep -q 'to=<alice' "$log/mail.log_current" ||
        fail "the delivery after the rotation is not in the new mail.log_current"
    say "ok: logrotate -f with the packaged snippet: rotated, a new log made, the next delivery in it"

    # A stop while a session is in its DATA: the session finishes, then nothing is left.
    in_root sh -c 'cat >/var/tmp/session.sh' <"$here/scripts/check-deb-session.sh"
    in_root bash /var/tmp/session.sh 2225 /var/tmp/session.fifo >"$scratch/session.log" 2>&1 &
    local session=$!
    for _ in $(seq 1 50); do
        grep -q '^in DATA$' "$scratch/session.log" && break
        sleep 0.1
    done
    grep -q '^in DATA$' "$scratch/session.log" || fail "the session did not reach DATA: $(cat "$scratch/session.log")"
    in_root systemctl stop --no-block msdispatcher
    for _ in $(seq 1 50); do
        [ "$(unit ActiveState)" != active ] && break
        sleep 0.1
    done
    [ "$(unit ActiveState)" != active ] || fail "systemctl stop did not begin"
    in_root timeout 10 sh -c 'echo end >/var/tmp/session.fifo'
    wait "$session" || fail "the session cut by the stop: $(cat "$scratch/session.log")"
    local data_reply
    data_reply=$(sed -n '/^in DATA$/,$p' "$scratch/session.log" | grep '^250 ' | head -n 1 || true)
    [ -n "$data_reply" ] || fail "the session's DATA got no 250: $(cat "$scratch/session.log")"
    for _ in $(seq 1 100); do
        [ "$(unit ActiveState)" = inactive ] && break
        sleep 0.1
    done
    [ "$(unit ActiveState)" = inactive ] || fail "after the stop the unit is $(unit ActiveState)"
    [ "$(unit Result)" = success ] || fail "the stop's result is $(unit Result), not success"
    # (With KillMode=mixed systemd kills what is left once the dispatcher exits, so this
    # holds by construction; the 250 above is what shows the drain.)
    if in_root pgrep -f /usr/lib/msdispatcher/ >/dev/null; then
        fail "processes left after the stop: $(in_root pgrep -af /usr/lib/msdispatcher/)"
    fi
    in_root grep -rqs "Subject: drained" /opt/SUNWmsgsr/store/alice/new/ || fail "the drained message is not stored"
    say "ok: systemctl stop during a DATA: the session got \"$data_reply\"; inactive (success), no process left"

    # Removing and purging.
    in_root dpkg -r msdispatcher >"$scratch/dpkg-r.log" 2>&1 || fail "dpkg -r failed: $(tail -n 5 "$scratch/dpkg-r.log")"
    for gone in /usr/lib/msdispatcher/dispatcher /lib/systemd/system/msdispatcher.service \
        /usr/share/man/man8/dispatcher.8.gz; do
        in_root test ! -e "$gone" || fail "dpkg -r left $gone"
    done
    in_root test -e /etc/logrotate.d/msdispatcher || fail "dpkg -r removed the conffile"
    in_root getent passwd mailsrv >/dev/null || fail "dpkg -r removed the account mailsrv"
    in_root test -e /opt/SUNWmsgsr/config/dispatcher.cnf || fail "dpkg -r removed the configuration"
    in_root grep -rqs "check-deb store" /opt/SUNWmsgsr/store/alice/new/ || fail "dpkg -r removed mail"
    case $(in_root systemctl show -p LoadState --value msdispatcher) in
    not-found) ;;
    *) fail "systemd still has the unit after dpkg -r" ;;
    esac
    say "ok: dpkg -r: programs and unit gone (systemd: not-found); the conffile, the account, the configuration and the mail kept"
    in_root dpkg -P msdispatcher >"$scratch/dpkg-p.log" 2>&1 || fail "dpkg -P failed: $(tail -n 5 "$scratch/dpkg-p.log")"
    in_root test ! -e /etc/logrotate.d/msdispatcher || fail "dpkg -P left the conffile"
    in_root grep -rqs "check-deb store" /opt/SUNWmsgsr/store/alice/new/ || fail "dpkg -P removed mail"
    say "ok: dpkg -P: the conffile gone; the mail kept"
}

# in_root COMMAND...: runs in the container (all its namespaces), with a plain environment.
in_root() {
    nsenter -t "$init" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# unit PROPERTY: the unit's property, as systemctl show gives it.
unit() {
    in_root systemctl show -p "$1" --value msdispatcher
}

expect_active() {
    [ "$(unit ActiveState)" = active ] ||
        fail "$1: the unit is $(unit ActiveState) ($(unit SubState), status $(unit ExecMainStatus)): $(in_root journalctl -u msdispatcher --no-pager -n 5 2>&1)"
}

# wait_status TEXT WHAT: until STATUS= holds TEXT (a reload is asynchronous: SIGHUP).
wait_status() {
    for _ in $(seq 1 50); do
        unit StatusText | grep -qF "$1" && return 0
        sleep 0.1
    done
    fail "$2: STATUS= never said \"$1\" (it says: $(unit StatusText))"
}

# deliver PORT SUBJECT: one message to alice over LMTP, from inside the container.
deliver() {
    in_root swaks --protocol LMTP --server 127.0.0.1 --port "$1" --from relay-test@example.org \
        --to alice --header "Subject: $2" --body "delivered by check-deb" \
        >"$scratch/swaks.log" 2>&1 ||
        fail "LMTP delivery to port $1 ($2) failed: $(grep -E '^ *<[-~*]' "$scratch/swaks.log" | tail -n 4)"
}

stop_container() {
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        [ -z "$init" ] || in_root systemctl poweroff --no-block >/dev/null 2>&1 || true
        for _ in $(seq 1 75); do
            kill -0 "$nspawn" 2>/dev/null || break
            sleep 0.2
        done
        # Still up: the container's init takes every process of its pid namespace with it
        # (only while systemd-nspawn runs: after, that pid may be another process's).
        if kill -0 "$nspawn" 2>/dev/null; then
            [ -z "$init" ] || kill -KILL "$init" 2>/dev/null || true
            kill -KILL "$nspawn" 2>/dev/null || true
        fi
        wait "$nspawn" 2>/dev/null || true
    fi
    umount -R "$root" 2>/dev/null || umount -l "$root" 2>/dev/null || true
    umount -l "$scratch" 2>/dev/null || true
    rmdir "$scratch" 2>/dev/null || true
}

if [ "$inside" -eq 1 ]; then
    inside
else
    outside
    say "the package $(basename "$deb") passed every check"
fi
