"""semseg.stop.StopRequest: one Ctrl-C to a process group with DataLoader workers is one warning, and the workers keep loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from semseg.stop import StopRequest
from tests.conftest import REPO

SCRIPT = """
import logging, sys, time
from torch.utils.data import DataLoader, Dataset
from semseg.stop import StopRequest

class Slow(Dataset):
    def __len__(self): return 40
    def __getitem__(self, i): time.sleep(0.02); return i

logging.basicConfig(level=logging.INFO, format="%(process)d %(message)s")
seen = []
with StopRequest() as stop:
    for batch in DataLoader(Slow(), batch_size=2, num_workers=2):  # forked: the workers inherit the handler
        seen += batch.tolist()
        if len(seen) == 4:
            print("ready", flush=True)  # the test sends SIGINT to the whole group now, as a terminal does
            sys.stdin.readline()  # until the test has sent it
            deadline = time.time() + 20
            while not stop() and time.time() < deadline:
                time.sleep(0.01)
print(f"requested={stop()} all={sorted(seen) == list(range(40))}", flush=True)
"""


def test_one_ctrl_c_warns_once_and_workers_keep_loading(tmp_path: object) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=60)[1][-2000:]
        os.killpg(proc.pid, signal.SIGINT)  # the main process and both workers
        out, err = proc.communicate("\n", timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == "requested=True all=True"  # the stop was seen, and no worker stopped or died
    warnings = [line for line in err.splitlines() if "SIGINT received" in line]
    assert len(warnings) == 1, err
    assert warnings[0].split()[0] == str(proc.pid)  # from the main process


def test_handler_is_inert_outside_the_process_that_installed_it(monkeypatch: object) -> None:
    stop = StopRequest()
    with stop:
        monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked worker
        stop._handle(signal.SIGINT, None)
        stop._handle(signal.SIGINT, None)  # a second one neither aborts (KeyboardInterrupt) nor restores handlers
        assert not stop.requested
        assert signal.getsignal(signal.SIGINT) == stop._handle
        monkeypatch.undo()
