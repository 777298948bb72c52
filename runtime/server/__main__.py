"""``python -m plait.runtime.server [--model PATH] [--port 30000] ...`` is ``plait serve``."""

from plait.runtime.server.cli import serve

serve()
