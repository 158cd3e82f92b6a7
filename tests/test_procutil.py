"""procutil.SignalWakeup: a signal makes its fd readable, and close() puts back the wake-up fd
that was there before (the collectors host runs inside processes that may have their own)."""

from __future__ import annotations

import os
import select
import signal

from kernelsight.procutil import SignalWakeup


def test_a_signal_wakes_the_fd_and_close_restores_the_previous_wakeup_fd():
    r0, w0 = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_handler = signal.signal(signal.SIGUSR1, lambda *_: None)
    previous = signal.set_wakeup_fd(w0)
    try:
        wake = SignalWakeup.open()
        assert wake is not None  # pytest runs tests on the main thread
        assert select.select([wake.fd], [], [], 0)[0] == []
        os.kill(os.getpid(), signal.SIGUSR1)
        assert select.select([wake.fd], [], [], 5)[0] == [wake.fd]
        wake.drain()
        assert select.select([wake.fd], [], [], 0)[0] == []
        wake.close()
        assert signal.set_wakeup_fd(w0) == w0  # the fd set before open() is back
    finally:
        signal.set_wakeup_fd(previous)
        signal.signal(signal.SIGUSR1, old_handler)
        os.close(r0)
        os.close(w0)
