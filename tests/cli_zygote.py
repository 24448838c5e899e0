"""`medgem` runs for the tests without paying for torch and transformers' imports each time.

A CLI test runs `python -m medgem ...` as a user does: its own process, its own argv, environment,
working folder, standard input and output, and its exit status. Most of such a process's start is
importing torch and transformers (about 4 s on one core, more than the tiny model's whole answer),
so each pytest worker keeps one *zygote*: a Python process that has imported those third-party
libraries (never medgem) and forks a child per run. The child takes the run's environment and
folder, its stdio on files, and executes ``medgem/__main__.py`` exactly as ``python -m medgem``
does (medgem itself is imported fresh in every child), then shuts down as an interpreter does
(non-daemon threads joined, atexit handlers run).

What a pre-imported library read from the environment at import cannot change afterwards, so a
run whose environment differs from the zygote's in any such variable (``HF_*``, ``TRANSFORMERS_*``,
``TOKENIZERS_*``, thread settings, ``PYTHON*``, ``HOME``, ``XDG_CACHE_HOME``) starts a fresh
interpreter instead, as do runs that overlap one already in flight. ``MEDGEM_TEST_ZYGOTE=0`` turns
it off (every run a fresh interpreter).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

SENSITIVE = ("HF_", "HUGGINGFACE", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "PYTORCH_", "OMP_",
             "MKL_", "KMP_", "OPENBLAS", "CUDA", "PYTHON", "HOME", "XDG_CACHE_HOME", "LD_")

# The zygote: pre-import, then serve one JSON request per line on stdin, answering on stdout.
_ZYGOTE = r"""
import json, os, sys, threading
import numpy, PIL.Image, torch, transformers
from transformers import (AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                          AutoTokenizer, Gemma3ForCausalLM, Gemma3ForConditionalGeneration)
requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
answers.write("ready\n"); answers.flush()

def child(job):
    import atexit, runpy
    os.chdir(job["cwd"])
    os.environ.clear(); os.environ.update(job["env"])
    import tempfile; tempfile.tempdir = None  # read again from this run's TMPDIR, not the zygote's
    for fd, path, mode in ((0, job["stdin"], os.O_RDONLY), (1, job["stdout"], os.O_WRONLY),
                           (2, job["stderr"], os.O_WRONLY)):
        os.dup2(os.open(path, mode), fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.argv = [job["main"], *job["args"]]
    sys.path[0] = job["cwd"]
    code = 0
    try:
        runpy.run_module("medgem", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)

for line in requests:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(job)
        finally:
            os._exit(70)
    answers.write(json.dumps({"pid": pid}) + "\n"); answers.flush()
    _, status = os.waitpid(pid, 0)
    answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    answers.flush()
"""


def _sensitive(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(SENSITIVE)}


class Zygote:
    """One per process that runs CLI tests; started on first use."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.busy = threading.Lock()
        self.broken = os.environ.get("MEDGEM_TEST_ZYGOTE") == "0"

    def _start(self) -> bool:
        self.env = dict(os.environ)
        self.process = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, cwd=self.cwd, env=self.env,
                                        bufsize=0)  # unbuffered: select() sees every answer
        assert self.process.stdout is not None
        if self.process.stdout.readline() != b"ready\n":
            self.broken = True
            return False
        return True

    def run(self, args: list[str], env: dict[str, str], stdin: str | None,
            timeout: float) -> subprocess.CompletedProcess[str] | None:
        """The run's result, or None when this run must start an interpreter of its own."""
        if self.broken or not self.busy.acquire(blocking=False):
            return None
        try:
            running = self.process is not None and self.process.poll() is None
            if not running and not self._start():
                return None
            if _sensitive(env) != _sensitive(self.env):
                return None
            return self._run(args, env, stdin, timeout)
        finally:
            self.busy.release()

    def _run(self, args: list[str], env: dict[str, str], stdin: str | None,
             timeout: float) -> subprocess.CompletedProcess[str]:
        import medgem

        process: Any = self.process
        with tempfile.TemporaryDirectory(prefix="medgem-cli-") as folder:
            paths = {name: Path(folder) / name for name in ("stdin", "stdout", "stderr")}
            paths["stdin"].write_text(stdin or "")
            for name in ("stdout", "stderr"):
                paths[name].touch()
            job = {"args": args, "env": env, "cwd": str(self.cwd),
                   "main": str(Path(medgem.__file__).parent / "__main__.py"),
                   **{name: str(path) for name, path in paths.items()}}
            process.stdin.write((json.dumps(job) + "\n").encode())
            process.stdin.flush()
            pid = json.loads(process.stdout.readline())["pid"]
            if not _readable(process.stdout, timeout):
                os.kill(pid, signal.SIGKILL)
                process.stdout.readline()
                raise subprocess.TimeoutExpired([sys.executable, "-m", "medgem", *args], timeout)
            returncode = json.loads(process.stdout.readline())["returncode"]
            out, err = (_text(paths[name]) for name in ("stdout", "stderr"))
        return subprocess.CompletedProcess([sys.executable, "-m", "medgem", *args], returncode,
                                           out, err)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _readable(stream: IO[bytes], timeout: float) -> bool:
    return bool(select.select([stream], [], [], timeout)[0])


def _text(path: Path) -> str:
    """As subprocess's text mode reads it: UTF-8 (this machine's locale), universal newlines."""
    return path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
