#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal, the way an operator at a terminal would: waits for a
prompt, optionally runs a hook command first (e.g. another writer changing the target while the
prompt is open), types an answer, and exits with the command's exit status. Everything the command
printed goes to stdout. Used by the specs for interactive `cxone apply`.

usage: pty_run.py [--expect REGEX] [--hook SHELL_CMD] [--send TEXT] [--timeout S] -- CMD ARGS...
"""
import argparse, os, pty, re, select, subprocess, sys, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect")
    ap.add_argument("--hook")
    ap.add_argument("--send", default="")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    out = b""
    sent = a.expect is None
    if sent and a.send:
        os.write(fd, a.send.encode().decode("unicode_escape").encode())
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and re.search(a.expect.encode(), out):
            sent = True
            if a.hook:
                subprocess.run(a.hook, shell=True, check=True)
            os.write(fd, a.send.encode().decode("unicode_escape").encode())
    else:
        os.kill(pid, 9)
        sys.stdout.write(out.decode(errors="replace") + "\n[pty_run: timed out]\n")
        sys.exit(124)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(out.decode(errors="replace"))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
