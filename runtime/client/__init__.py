"""The client side of the worker socket: request building, the ZMQ client, ``Runtime``, and the
output stream that turns token records into text."""
