#!/usr/bin/env bash
# Installs, as root, the Debian packages the LMTP interoperability tests, `make bench` and
# `make check-deb` use:
# Postfix (smtp-source, smtp-sink), swaks, Dovecot (doveadm, the LMTP server we compare
# against), Python's prometheus_client (the OpenMetrics parser tests/metrics_format.rs checks
# the metrics with), iproute2 (`ip netns`: the separate hosts of the two-tier tests). No system mail service is started, now or later: a policy-rc.d refuses every
# service start while the packages install, and the services are then disabled and stopped.
# Also creates the local accounts `alice` and `bob` (no home, no login) that the native
# (/var/mail) delivery tests deliver to, and `mailsrv` (the seed's IMTA_USER), the dedicated
# account the test installations' workers run as. Safe to run again: it does nothing that is done.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

need=()
command -v make >/dev/null || need+=(make)
command -v ip >/dev/null || need+=(iproute2) # the two-tier tests' hosts: network namespaces
command -v smtp-source >/dev/null || need+=(postfix)
command -v swaks >/dev/null || need+=(swaks)
command -v doveadm >/dev/null || need+=(dovecot-core)
command -v logrotate >/dev/null || need+=(logrotate) # tests/log_rotation.rs runs the snippet
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
command -v mandoc >/dev/null || need+=(mandoc) # tests/man_pages.rs: mandoc -T lint
command -v lintian >/dev/null || need+=(lintian) # scripts/check-deb.sh: the package's lint
# scripts/check-deb.sh: the unit checked and run under a real systemd in a container
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v adduser >/dev/null || need+=(adduser) # the package's postinst
command -v file >/dev/null || need+=(file)       # are the packaged programs stripped
# tests/metrics_format.rs: the OpenMetrics parser, for Debian's own interpreter
/usr/bin/python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null ||
    need+=(python3-prometheus-client)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps: missing ${need[*]}; run this script as root" >&2
        exit 1
    fi
    # While the packages install, no service may start (invoke-rc.d honours this file).
    policy=/usr/sbin/policy-rc.d
    had_policy=0
    [ -e "$policy" ] && had_policy=1
    if [ "$had_policy" -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    # Postfix asks how to configure itself: "No configuration" leaves it inert.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Should anything have started regardless, stop it; and keep it from starting at boot.
    for svc in postfix dovecot; do
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        fi
        if [ -x "/etc/init.d/$svc" ]; then
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    done
fi

for user in alice bob mailsrv; do
    if ! getent passwd "$user" >/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "install-test-deps: account $user is missing; run this script as root" >&2
            exit 1
        fi
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$user"
    fi
done
echo "install-test-deps: postfix, swaks, dovecot, iproute2, logrotate, mandoc, lintian, systemd-nspawn, python3-prometheus-client and the accounts alice, bob, mailsrv are present"
