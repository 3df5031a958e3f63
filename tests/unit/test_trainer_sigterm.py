"""The trainer's SIGTERM handler: a Failed result from the trainer itself, a plain death in the processes it forks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
ENV = {**os.environ, "PYTHONPATH": str(OPERATOR)}  # this checkout's kontinual, whatever the venv points at

# What yolov5's LoadImagesAndLabels.cache_labels does on every new split: a fork Pool, closed with
# terminate(), which SIGTERMs its workers. A worker that runs the trainer's handler instead of dying
# can loop back into the queue while terminate() waits for it: the trainer hung on the real node.
POOLS = textwrap.dedent("""
    import sys
    from multiprocessing.pool import Pool
    from kontinual.trainer.cli import install_sigterm_handler

    def same(x):
        return x

    install_sigterm_handler()
    for _ in range(int(sys.argv[1])):
        with Pool(1) as pool:
            assert list(pool.imap(same, range(5))) == list(range(5))
    print("done")
""")


def test_pools_the_trainer_forks_close_under_its_sigterm_handler() -> None:
    # With the handler raising in the workers too, 36-100 such pools in a row were enough to hang.
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", POOLS, "300"], capture_output=True, text=True, timeout=60,
                          env=ENV)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]
    print(f"300 pools closed in {time.monotonic() - started:.1f} s")


def test_sigterm_to_the_trainer_writes_a_failed_result(tmp_path: Path) -> None:
    result_file = tmp_path / "result.json"
    waiting = textwrap.dedent("""
        import sys, time
        from kontinual.trainer import cli
        cli._parse = lambda argv: (print("ready", flush=True), time.sleep(60))  # a run that takes long
        sys.exit(cli.main(sys.argv[1:]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", waiting, "--version", "4", "--result-file", str(result_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    result = json.loads(result_file.read_text())
    assert result["status"] == "Failed" and result["version"] == 4, result
    assert result["message"].startswith("terminated (SIGTERM)"), result
