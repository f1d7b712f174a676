"""Every command in docs/security.md, run as a user would type it (issue 11: "docs/security.md:
how to run a secured cluster, with commands that the tests exercise").

The ```console blocks run in document order in one scratch directory, each ``$ `` line with
bash (``discoverd``, ``python3`` and — when the machine has none — a small ``curl`` stand-in
first on ``PATH``). Conventions the page keeps:

* every ``127.0.0.1:PORT`` / ``localhost:PORT`` is replaced, consistently, by a free port;
* a command ending in `` &`` starts a background process (a member); the next command runs
  once the ports of its ``--listen-client-urls`` accept connections;
* ``NAME=$(...)`` sets a variable for the commands after it;
* the lines under a command are its expected output: each must appear, in order, among the
  lines it printed; a first line starting with ``Error:`` means the command must fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from discoverd.testing.cluster import free_port
from discoverd.testing.console import console_commands

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ADDRESS = re.compile(r"(127\.0\.0\.1|localhost):(\d{4,5})")
ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)=\$\((.*)\)$")
BOUND = 60.0

CURL_SHIM = '''#!{python}
"""Enough of curl for docs/security.md: -s -X -d -H -o -w '%{{http_code}}\\\\n' --cacert
--cert --key, over http.client."""
import http.client, ssl, sys
from urllib.parse import urlsplit
args, url, method, data, headers, out, fmt = sys.argv[1:], None, None, None, {{}}, None, None
ca = cert = key = None
i = 0
while i < len(args):
    a = args[i]
    if a in ("-X", "-d", "-H", "-o", "-w", "--cacert", "--cert", "--key"):
        v = args[i + 1]; i += 2
        if a == "-X": method = v
        elif a == "-d": data = v.encode()
        elif a == "-H": k, _, hv = v.partition(":"); headers[k.strip()] = hv.strip()
        elif a == "-o": out = v
        elif a == "-w": fmt = v
        elif a == "--cacert": ca = v
        elif a == "--cert": cert = v
        elif a == "--key": key = v
        continue
    if not a.startswith("-"): url = a
    i += 1
parts = urlsplit(url)
if parts.scheme == "https":
    ctx = ssl.create_default_context(cafile=ca)
    if cert: ctx.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=30)
else:
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
conn.request(method or ("POST" if data is not None else "GET"),
             parts.path + ("?" + parts.query if parts.query else ""), body=data,
             headers=headers)
resp = conn.getresponse()
body = resp.read()
if out != "/dev/null": sys.stdout.buffer.write(body)
if fmt: sys.stdout.write(fmt.replace("%{{http_code}}", str(resp.status))
                         .replace("\\\\n", "\\n"))
'''


class Ports:
    def __init__(self) -> None:
        self.mapping: dict[str, int] = {}

    def __call__(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            port = self.mapping.setdefault(m.group(2), free_port())
            return f"{m.group(1)}:{port}"
        return ADDRESS.sub(sub, text)


def _wait_listening(command: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    urls = re.search(r"--listen-client-urls\s+(\S+)", command)
    ports = [int(p) for p in re.findall(r":(\d+)", urls.group(1))] if urls else []
    deadline = time.monotonic() + BOUND
    for port in ports:
        while True:
            assert proc.poll() is None, f"{command} exited:\n{log.read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{command} never listened on {port}"
                time.sleep(0.05)


def test_every_command_in_docs_security(tmp_path: Path) -> None:
    found = console_commands(DOC.read_text())
    assert len(found) >= 15, "docs/security.md lost its examples"
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if shutil.which("curl") is None or os.environ.get("DISCOVERD_TEST_CURL_SHIM"):
        shim = bin_dir / "curl"
        shim.write_text(CURL_SHIM.format(python=sys.executable))
        shim.chmod(0o755)
    # This Python's own bin first (its ``discoverd``, ``python3``); then the curl stand-in.
    path = os.pathsep.join([str(Path(sys.executable).parent), str(bin_dir),
                            os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path}
    for name in list(env):
        if name.startswith("DISCOVERD_") and name != "DISCOVERD_SIM_SEEDS":
            del env[name]  # the page assumes a clean shell
    ports = Ports()
    background: list[subprocess.Popen[bytes]] = []
    try:
        for cmd in found:
            text = ports(cmd.command)
            where = f"docs/security.md:{cmd.line}: {text}"
            assigned = ASSIGN.match(text)
            if assigned:
                run = subprocess.run(["bash", "-c", assigned.group(2)], cwd=work, env=env,
                                     capture_output=True, timeout=BOUND, check=False)
                assert run.returncode == 0, f"{where}\n{run.stderr.decode()}"
                env[assigned.group(1)] = run.stdout.decode().strip()
                assert env[assigned.group(1)], f"{where}: printed nothing"
                continue
            if text.endswith("&"):
                log = tmp_path / f"background-{len(background)}.log"
                proc = subprocess.Popen(["bash", "-c", "exec " + text[:-1]], cwd=work,
                                        env=env, stdout=log.open("wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
                background.append(proc)
                _wait_listening(text, proc, log)
                continue
            run = subprocess.run(["bash", "-c", text], cwd=work, env=env,
                                 capture_output=True, timeout=BOUND, check=False)
            output = (run.stdout + run.stderr).decode(errors="replace")
            expected = [ports(e) for e in cmd.expected]
            if expected and expected[0].startswith("Error:"):
                assert run.returncode != 0, f"{where}: expected to fail\n{output}"
            else:
                assert run.returncode == 0, f"{where}: exit {run.returncode}\n{output}"
            lines = [line.rstrip() for line in output.splitlines()]
            at = 0
            for want in expected:
                while at < len(lines) and lines[at] != want:
                    at += 1
                assert at < len(lines), f"{where}: {want!r} not in the output:\n{output}"
                at += 1
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in background:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
