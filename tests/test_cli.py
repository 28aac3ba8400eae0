"""semseg.cli.run_script: Ctrl-C in validate.py and test.py is one line and exit code 130, not a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from semseg.cli import run_script
from tests.conftest import REPO, one_line_error
from tests.fixtures.checkpoints import write_checkpoint

# many small images: an evaluation that runs for minutes unless interrupted
DATA = {"name": "synthetic", "num_workers": 1, "params": {"size": [48, 64], "num_images": {"train": 2, "val": 5000, "test": 5000}}}


def test_keyboard_interrupt_is_one_line_and_130(capsys: pytest.CaptureFixture) -> None:
    def body(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    try:
        rc = run_script(body, argparse.Namespace())
    except KeyboardInterrupt:  # uncaught, it would stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped run_script")
    assert rc == 130
    assert one_line_error(capsys) == "interrupted (Ctrl-C)"


def has_forked_workers(pid: int) -> bool:
    """``pid`` has forked DataLoader workers: children running its own command line (not a helper
    such as the ``uname`` that some imports start), from /proc."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return any(Path(f"/proc/{kid}/cmdline").read_bytes() == cmdline for kid in kids)
    except OSError:  # a child that has just exited
        return False


def still_ready(pid: int, ready: Callable[[int], bool]) -> bool:
    """``ready`` now and 0.3 s later: not a passing helper process, and well inside the loop."""
    if not ready(pid):
        return False
    time.sleep(0.3)
    return ready(pid)


def interrupt_when(cmd: list[str], cwd: Path, ready: Callable[[int], bool]) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; once ``ready(pid)``, send SIGINT to the whole group as a
    terminal's Ctrl-C does (DataLoader workers included); (exit code, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a terminal's shell starts commands with SIGINT at its default; one started in the background by a script
    # (`cmd &`, as CI may run this suite) inherits SIGINT *ignored*, and then Python never raises KeyboardInterrupt
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)  # fmt: skip
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not still_ready(proc.pid, ready):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to see the loader's workers")
def test_ctrl_c_in_validate_is_one_line(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "enet.pt", DATA)
    cmd = [sys.executable, str(REPO / "validate.py"), "--checkpoint", str(ckpt), "--set", "train.device=cpu"]
    rc, err = interrupt_when(cmd, tmp_path, has_forked_workers)  # workers up: evaluation has begun
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)"
    assert not list(tmp_path.glob("*.json"))  # no metrics file from half a split


def test_ctrl_c_in_test_is_one_line(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "enet.pt", DATA)
    out = tmp_path / "predictions"
    cmd = [sys.executable, str(REPO / "test.py"), "--checkpoint", str(ckpt), "--split", "test", "--out", str(out), "--set", "train.device=cpu"]
    rc, err = interrupt_when(cmd, tmp_path, lambda pid: any((out / "ids").glob("*.png")))  # predictions are being written
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)"


BAR_AND_WARNING = """
import argparse, logging, time
from tqdm import tqdm
from semseg.cli import run_script

def body(args):
    for i in tqdm(range(6), desc="epoch 1", mininterval=0):
        time.sleep(0.05)
        if i == 3:
            logging.getLogger("semseg.sinks.visdom").warning("visdom server stopped answering")
    return 0

raise SystemExit(run_script(body, argparse.Namespace()))
"""


def test_a_warning_during_a_progress_bar_gets_its_own_line() -> None:
    """On a terminal, a log line written mid-bar starts a clean line (tqdm.write), not the bar's tail."""
    import fcntl
    import pty
    import struct
    import termios

    out = bytearray()
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are a 120-column terminal (a 0-column one gets no bar)
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-c", BAR_AND_WARNING])
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    line = next(seg for seg in text.replace("\r\n", "\n").split("\n") if "visdom server stopped answering" in seg)
    # the bar was cleared before the message: after the last carriage return only the log line is left
    assert line.split("\r")[-1].lstrip().split(" ")[1] == "WARNING", repr(line)
    assert "epoch 1" not in line.split("\r")[-1], repr(line)
