"""The progress bar counts images and stays silent off a terminal."""

from __future__ import annotations

import threading

from clipvec_tasks.progress import Progress


def test_counts_from_many_threads_and_draws_when_enabled(capsys):
    bar = Progress(400, enabled=True)
    threads = [threading.Thread(target=lambda: [bar.update(1) for _ in range(100)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.done == 400 and "400/400" in capsys.readouterr().err


def test_silent_when_not_a_terminal(capsys):
    bar = Progress(5)  # pytest's stderr is not a TTY
    bar.update(5)
    bar.close()
    assert bar.done == 5 and capsys.readouterr().err == ""
