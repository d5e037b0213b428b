#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the project's fixtures and the inputs its tests use.

Run once from the repository root (`python3 fuzz/seed.py`) to build the starting corpora;
`make fuzz` then grows them and `cargo fuzz cmin` minimizes them (docs/fuzzing.md). Files
are named by the SHA-1 of their content, as libFuzzer names what it finds, so seeding twice
adds nothing. The input layouts are those of src/fuzzing.rs.
"""

import glob
import hashlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def add(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def files(*patterns):
    out = []
    for p in patterns:
        out += [f for f in glob.glob(os.path.join(ROOT, p)) if not f.endswith(".expected")]
    return sorted(set(out))


def read(path):
    with open(path, "rb") as f:
        return f.read()


for f in files("fixtures/seed/imta_tailor", "fixtures/*/tailor", "fixtures/*/imta_tailor",
               "fixtures/broken/*/imta_tailor", "fixtures/broken/check/*/imta_tailor",
               "fixtures/demo/config/imta_tailor.in"):
    add("tailor", read(f))
for f in files("fixtures/seed/dispatcher.cnf", "fixtures/dispatcher_cnf/*.cnf",
               "fixtures/broken/dispatcher_cnf/*.cnf", "fixtures/broken/dispatcher_cnf/*.inc",
               "fixtures/broken/check/*/dispatcher.cnf", "fixtures/demo/config/dispatcher.cnf",
               "fixtures/runtime/dispatcher.cnf.in"):
    add("dispatcher_cnf", read(f))
for f in files("fixtures/seed/mappings", "fixtures/mappings_files/*", "fixtures/broken/mappings/*",
               "fixtures/demo/config/mappings", "fixtures/runtime/mappings.in",
               "fixtures/test_mapping/logging"):
    if not f.endswith("tailor"):
        add("mappings", read(f))
for f in files("fixtures/seed/imta.cnf", "fixtures/imta_cnf/*", "fixtures/broken/imta_cnf/*",
               "fixtures/broken/check/*/imta.cnf", "fixtures/demo/config/imta.cnf"):
    if not f.endswith("tailor") and not f.endswith("_option"):
        add("imta_cnf", read(f))
for f in files("fixtures/*/*_option", "fixtures/*/*/*_option"):
    add("channel_option", read(f))

# The mapping engine's vectors: a mappings file and, per table, the inputs of its cases.
for f in files("fixtures/mappings/*.vectors"):
    text = read(f).decode()
    tables, cases = text.split("=== cases")
    tables = tables.replace("=== tables\n", "", 1)
    add("mappings", tables)
    inputs = {}
    for line in cases.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and not line.startswith("#"):
            inputs.setdefault(cols[0].upper(), []).append(cols[1].replace("\\t", "\t"))
    add("mapping_engine", tables + "\0" + "\n".join(sum(inputs.values(), [])))
    table = None
    for line in tables.splitlines():
        if line and not line[0].isspace() and not line.startswith("!"):
            table = line.strip().upper()
        elif line.strip() and table:
            cols = re.split(r"(?<!\$)[ \t]+", line.strip(), maxsplit=1)
            for subject in inputs.get(table, [])[:4]:
                add("mapping_pattern", cols[0] + "\n" + subject)
            if len(cols) == 2:
                add("mapping_template", cols[1] + "\nCapture.Zero\nb\n\u00df")

lmtp_lines = [
    "LHLO relay.example", "LHLO", "EHLO relay", "HELO relay",
    "MAIL FROM:<a@b>", "MAIL FROM:<>", "MAIL FROM:<> SIZE=5 BODY=8BITMIME",
    "MAIL FROM: sender@relay.example size=10", "MAIL FROM:<a@b> FROB=1",
    "MAIL FROM:<@hop1,@hop2:user@d>", "MAIL FROM:<\"quoted > bracket\"@x>",
    "RCPT TO:<alice@example.com>", "RCPT TO: alice+Sent xquota=1000000,100 xdflg=0",
    "RCPT TO: bob xquota=10,10 xdflg=2", "RCPT TO:<..>", "RCPT TO:<alice+../x@x>",
    "RCPT TO:uid+folder", "RCPT TO:<>", "DATA", "DATA now", "BDAT 10", "RSET", "NOOP x",
    "QUIT", "VRFY alice", "EXPN list", "HELP", "STARTTLS", "AUTH PLAIN", "XYZZY",
]
for line in lmtp_lines:
    add("lmtp_command", line)
addresses = [
    "alice@example.com", "Alice+Sent@Example.COM", "bob", "bob+@x", "../etc@x", "a/b@x",
    "+/etc/passwd", ".hidden@x", "a\x01b@x", "\"a b\"@x", "@x", "a@", "a\\b", "jos\u00e9@x",
    "uid+folder", "a" * 256 + "@x",
]
for a in addresses:
    add("lmtp_address", a)

# A session: three control bytes (mode and line limit, read size, size limit), then bytes.
session = ("LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: x\r\n\r\n"
           "..leading dot\r\nbare\nlf\r\n.\r\nQUIT\r\n")
for control in [b"\x09\x00\xff", b"\x0a\x03\xff", b"\x0b\x06\x05", b"\x09\xfa\xff", b"\x00\x01\xff"]:
    add("lmtp_input", control + session.encode())
add("lmtp_input", b"\x0b\x02\xff" + b"NOOP\rDATA\ra\rb\r\n.\rQUIT\r")
add("lmtp_input", b"\x0a\x04\x10" + b"DATA\nx\x00y\n.end\n.\nNOOP\n")
add("lmtp_input", b"\x03\x07\xff" + b"AAAAAAAAAAAA\r\nNOOP\r\n")
# 0xFE stands for 70,000 bytes of text: lines longer than the reader's buffer.
for control in [b"\x09\x00\xff", b"\x0a\xfa\xff", b"\x0b\x0f\x10", b"\x09\x05\x20"]:
    add("lmtp_input", control + b"NOOP\r\nDATA\r\n\xfe\r\n.\xfe\xfe\r\n\xfe\r\r\n.\r\n\xfe\nQUIT\r\n")

for m in ["READY", "DRAINING", "ENDED 5", "ENDED x", "READY now", "DRAIN",
          "HANDOFF 17 127.0.0.2:40000 [::1]:2225", "HANDOFF x 1.2.3.4:5 1.2.3.4:6",
          "HANDOFF 1 [fe80::1%2]:5 127.0.0.1:6 extra"]:
    add("worker_message", m)
