#!/usr/bin/env bash
# An LMTP session that stops in the middle of its DATA until told to go on, for
# scripts/check-deb.sh: it prints "in DATA" once the message's first lines are sent, waits for
# a line on FIFO, then sends the rest and prints every reply. It fails if the server closes the
# connection or any reply is not the expected one.
# usage: check-deb-session.sh PORT FIFO
set -euo pipefail
port=$1 fifo=$2
rm -f "$fifo"
mkfifo "$fifo"
exec 3<>"/dev/tcp/127.0.0.1/$port"
reply() { # reply CODE [CODE2]: reads one reply (all its lines); fails unless it is one of them
    local line code
    while IFS= read -r -t 30 line <&3; do
        line=${line%$'\r'}
        echo "$line"
        code=${line:0:3}
        [ "$code" = "$1" ] || [ "$code" = "${2:-$1}" ] || return 1
        [ "${line:3:1}" = - ] || return 0
    done
    echo "connection closed or silent"
    return 1
}
reply 220
printf 'LHLO check-deb.example.org\r\n' >&3 && reply 250
printf 'MAIL FROM:<relay-test@example.org>\r\n' >&3 && reply 250
printf 'RCPT TO:<alice>\r\n' >&3 && reply 250
printf 'DATA\r\n' >&3 && reply 354
printf 'Subject: drained\r\nFrom: <relay-test@example.org>\r\n\r\nfirst half\r\n' >&3
echo "in DATA"
read -r _ <"$fifo"
printf 'second half, after the stop began\r\n.\r\n' >&3
reply 250
# A draining server may end the session itself once the transaction is done (421, RFC 5321
# 3.8); a QUIT then gets that or its 221.
printf 'QUIT\r\n' >&3 2>/dev/null || exit 0
reply 221 421
