"""The C step's pool does not wait, at a claimed phase, for a worker that has not come.

A worker of ``cpu_decode.c``'s pool is held in a signal handler (as if descheduled for the HTTP
server on a 2-core box) while the caller runs products on two threads: each product returns with
the worker still held (the caller claimed every chunk), with the bits one thread gives; once let
go, the worker joins the next products. Run in a child process: the pool (and its threads) must
be the library's own, not one a variant build in this test process also started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plait.kernels import cpu_decode

pytestmark = pytest.mark.skipif(cpu_decode.library() is None, reason="no C step on this machine")

# Holds the thread it is delivered to until ``let_go``.
HOLD_C = r"""
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
static atomic_int held, release;
static void hold(int sig) {
    (void)sig;
    atomic_store(&held, 1);
    while (!atomic_load(&release)) {
        struct timespec t = {0, 1000000};
        nanosleep(&t, 0);
    }
    atomic_store(&held, 0);
}
int install(int sig) {
    struct sigaction sa = {0};
    sa.sa_handler = hold;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, 0);
}
int is_held(void) { return atomic_load(&held); }
void let_go(void) { atomic_store(&release, 1); }
"""

CHILD = r"""
import ctypes, os, signal, sys, threading, time
import torch
from plait.kernels import cpu_decode

hold = ctypes.CDLL(sys.argv[1])
lib = cpu_decode.library()
gen = torch.Generator().manual_seed(0)
w, x = torch.randn(4096, 576, generator=gen), torch.randn(1, 576, generator=gen)
expected = torch.empty(1, 4096)
assert cpu_decode.gemv(lib, cpu_decode.DT_F32, w, x, expected, threads=1) == 0

def product(threads):
    y = torch.empty(1, 4096)
    assert cpu_decode.gemv(lib, cpu_decode.DT_F32, w, x, y, threads=threads) == 0
    return y

assert torch.equal(product(2), expected)  # starts worker 1
tids = [int(t) for t in os.listdir("/proc/self/task")
        if open(f"/proc/self/task/{t}/comm").read().strip() == "plait-pool-1"]
assert len(tids) == 1, tids
sig = signal.SIGRTMIN + 3
assert hold.install(sig) == 0
assert ctypes.CDLL(None).tgkill(os.getpid(), tids[0], sig) == 0
deadline = time.monotonic() + 30
while not hold.is_held():
    assert time.monotonic() < deadline, "the signal never reached the worker"
    time.sleep(0.001)

results = []
runner = threading.Thread(target=lambda: results.extend(product(2) for _ in range(20)))
runner.start()
runner.join(timeout=120)
done_while_held = not runner.is_alive() and hold.is_held()
hold.let_go()
runner.join()
assert done_while_held, "a product waited for the held worker"
assert all(torch.equal(y, expected) for y in results)
deadline = time.monotonic() + 30
while hold.is_held():
    assert time.monotonic() < deadline, "the worker was not let go"
    time.sleep(0.001)
assert all(torch.equal(product(2), expected) for _ in range(20))  # it takes part again
print("ok")
"""


def test_a_claimed_product_does_not_wait_for_a_worker_that_never_came(tmp_path):
    so = tmp_path / "hold.so"
    src = tmp_path / "hold.c"
    src.write_text(HOLD_C)
    cc = cpu_decode._compiler()
    assert cc is not None
    subprocess.run([cc, "-O1", "-fPIC", "-shared", "-o", str(so), str(src)], check=True)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(so)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
