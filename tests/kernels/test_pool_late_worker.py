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

# Holds the thread it is delivered to until ``let_go``; ``wait_held`` and ``wait_left`` block
# until the handler has entered or left (semaphores: ``sem_post`` is async-signal-safe), or
# until their deadline in seconds (0 then).
HOLD_C = r"""
#include <errno.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
static sem_t entered, release, left;
static atomic_int held;
static void hold(int sig) {
    (void)sig;
    atomic_store(&held, 1);
    sem_post(&entered);
    while (sem_wait(&release) != 0) {}
    atomic_store(&held, 0);
    sem_post(&left);
}
int install(int sig) {
    sem_init(&entered, 0, 0);
    sem_init(&release, 0, 0);
    sem_init(&left, 0, 0);
    struct sigaction sa = {0};
    sa.sa_handler = hold;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, 0);
}
static int wait_for(sem_t *s, double seconds) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += (time_t)seconds;
    int rc;
    while ((rc = sem_timedwait(s, &t)) != 0 && errno == EINTR) {}
    return rc == 0;
}
int wait_held(double seconds) { return wait_for(&entered, seconds); }
int wait_left(double seconds) { return wait_for(&left, seconds); }
int is_held(void) { return atomic_load(&held); }
void let_go(void) { sem_post(&release); }
"""

CHILD = r"""
import ctypes, os, signal, sys, threading
import torch
from plait.kernels import cpu_decode

hold = ctypes.CDLL(sys.argv[1])
hold.wait_held.argtypes = hold.wait_left.argtypes = [ctypes.c_double]
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
assert hold.wait_held(30), "the signal never reached the worker"

results = []
runner = threading.Thread(target=lambda: results.extend(product(2) for _ in range(20)))
runner.start()
runner.join(timeout=120)
done_while_held = not runner.is_alive() and hold.is_held()
hold.let_go()
runner.join()
assert done_while_held, "a product waited for the held worker"
assert all(torch.equal(y, expected) for y in results)
assert hold.wait_left(30), "the worker was not let go"
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
