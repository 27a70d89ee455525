"""Progress bars: live on a terminal, a few plain lines in a log file."""

from __future__ import annotations

import io

from mert.progress import is_terminal, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_plain_lines_not_carriage_returns():
    log = io.StringIO()
    for _ in progress_bar(range(5000), file=log, desc="scan", unit="file"):
        pass
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    # Within the 30 s interval: the opening line and the final state, once each (tqdm redraws it at close).
    assert len(lines) == 2 and lines[0].startswith("scan:   0%") and "5000/5000" in lines[1]


def test_log_interval_is_configurable_and_lines_do_not_repeat(monkeypatch):
    monkeypatch.setenv("MERT_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    bar = progress_bar(total=20, file=log, desc="pretrain", unit="step")
    for i in range(20):
        bar.set_postfix({"loss": f"{20 - i:.3f}"}, refresh=False)
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) > 2 and len(set(lines)) == len(lines)  # every refresh a line, no duplicate at close
    assert "20/20" in lines[-1] and "loss=1.000" in lines[-1]


def test_terminal_keeps_tqdm_redraws():
    term = _Terminal()
    assert is_terminal(term) and not is_terminal(io.StringIO()) and not is_terminal(None)
    for _ in progress_bar(range(3), file=term, desc="embed", mininterval=0):
        pass
    assert "\r" in term.getvalue()  # tqdm's in-place bar


def test_disabled_bar_writes_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(10), file=log, disable=True):
        pass
    assert log.getvalue() == ""
