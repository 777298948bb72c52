"""``python -m plait.runtime.worker``: the worker process (started by ``start_worker``)."""

from plait.runtime.worker.zmq_worker import main

main()
