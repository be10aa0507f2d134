#!/usr/bin/env python3
"""Writes the engine target's seed corpus (fuzz/corpus/engine) in the byte format that
`#[derive(Arbitrary)]` (arbitrary 1.x) reads for its `Input`: `cargo fuzz fmt engine
FILE` prints a seed back as Rust values. Run from fuzz/: python3 seeds/engine.py"""
import struct

OPS = ["Open", "Say", "Raw", "ClientClose", "Release", "Connect", "ServerRead",
       "Deliver", "ServerHangUp", "Wait", "Settle", "ChangePassword", "NewMail",
       "DeleteElsewhere"]
LINES = ["User", "Pass", "AuthPlain", "Command", "Quit", "Xclient", "Stls", "Apop"]
# Indices into pop3_engine::testing::model::{USERS, PASSWORDS, COMMANDS}.
ALICE, CAROL, BOB = 0, 1, 2
STAT, LIST, UIDL, RETR, DELE, CAPA = 0, 1, 3, 5, 7, 12


def variant(names, name):
    # derive(Arbitrary) picks variant (u32 * count) >> 32.
    i, n = names.index(name), len(names)
    return struct.pack("<I", 0 if i == 0 else (i << 32) // n + 1)


def op(name, *fields):
    # Each element of the op list is preceded by a "keep going" bool.
    return b"\x01" + variant(OPS, name) + b"".join(fields)


def u8(v):
    return bytes([v])


def say(conn, line, *fields):
    return op("Say", u8(conn), variant(LINES, line), *fields)


def check(conn, user, pw, *commands):
    """A whole check session, the network settling after each line."""
    out = op("Open") + say(conn, "User", u8(user)) + op("Settle")
    out += say(conn, "Pass", u8(pw)) + op("Settle")
    for c in commands:
        out += say(conn, "Command", u8(c)) + op("Settle")
    return out + say(conn, "Quit") + op("Settle")


def wait(secs):
    return op("Wait", struct.pack("<H", secs))


ATTENUATE, RELAY = b"\x00", b"\x01"
SEEDS = {
    # Verified empty, then answered at the edge.
    "check-twice": ATTENUATE + check(0, ALICE, 0, STAT) + check(1, ALICE, 0, STAT, LIST),
    # A new password, seen by the server, replaces the old one.
    "password-change": ATTENUATE + check(0, ALICE, 0, STAT)
    + op("ChangePassword", u8(ALICE), u8(1)) + check(1, ALICE, 1, STAT) + check(2, ALICE, 0, STAT),
    # Mail arrives; the interval runs out inside an attenuated session.
    "new-mail-and-interval": ATTENUATE + check(0, CAROL, 0, STAT) + op("NewMail", u8(CAROL))
    + op("Open") + say(0, "User", u8(CAROL)) + say(0, "Pass", u8(0)) + op("Settle")
    + wait(90) + say(0, "Command", u8(RETR)) + say(0, "Command", u8(DELE)) + op("Settle")
    + say(0, "Quit") + op("Settle"),
    # AUTH PLAIN with the credentials inline and after the challenge.
    "auth-plain": ATTENUATE + op("Open") + say(0, "AuthPlain", u8(ALICE), u8(0), u8(1))
    + op("Settle") + say(0, "Command", u8(STAT)) + say(0, "Quit") + op("Settle")
    + op("Open") + say(1, "AuthPlain", u8(ALICE), u8(0), u8(0)) + op("Settle"),
    # Pipelined commands against a server that answers a few bytes at a time.
    "pipelined-slow-server": ATTENUATE + op("Open") + say(0, "User", u8(ALICE))
    + say(0, "Pass", u8(0)) + say(0, "Command", u8(CAPA)) + say(0, "Quit")
    + op("Connect", u8(0), u8(1)) + (op("ServerRead", u8(0)) + op("Deliver", u8(0), u8(3))) * 12,
    # The upstream connection fails, then the server hangs up mid-session.
    "upstream-failures": ATTENUATE + op("Open") + say(0, "User", u8(ALICE))
    + op("Connect", u8(0), u8(0)) + op("Open") + say(1, "User", u8(CAROL)) + op("Settle")
    + say(1, "Pass", u8(0)) + op("ServerHangUp", u8(1)) + op("Settle"),
    # An idle session meets autologout; a client leaves without QUIT.
    "autologout": ATTENUATE + op("Open") + say(0, "User", u8(ALICE)) + say(0, "Pass", u8(0))
    + op("Settle") + wait(650) + op("Open") + say(1, "User", u8(CAROL))
    + op("ClientClose", u8(1)) + op("Release", u8(0)) + op("Settle"),
    # XCLIENT from the client: before login, and behind an opted-out user.
    "xclient": ATTENUATE + op("Open") + say(0, "Xclient") + say(0, "User", u8(BOB))
    + say(0, "Xclient") + op("Settle"),
    # A leave-on-server client: a snapshot, webmail deletes the first message, the
    # next check lists and fetches by number.
    "snapshot-and-deletion-elsewhere": ATTENUATE + op("NewMail", u8(ALICE))
    + op("NewMail", u8(ALICE)) + wait(90) + check(0, ALICE, 0, UIDL)
    + op("DeleteElsewhere", u8(ALICE)) + check(1, ALICE, 0, STAT, UIDL, RETR),
    "relay-check": RELAY + check(0, ALICE, 0, STAT, LIST, RETR),
    # XCLIENT behind a failed AUTH and a refused STLS, through the relay.
    "relay-xclient": RELAY + op("Open") + say(0, "AuthPlain", u8(ALICE), u8(2), u8(0))
    + say(0, "Xclient") + op("Settle") + op("Open") + say(1, "Stls") + say(1, "Xclient")
    + op("Settle"),
}

for name, data in SEEDS.items():
    with open(f"corpus/engine/{name}", "wb") as f:
        f.write(data)
