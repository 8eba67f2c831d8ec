"""Real-time binser: a streaming engine (:mod:`binser.serve.stream`) and an HTTP/WebSocket
server with a web page (:mod:`binser.serve.app`, needs the ``serve`` extra).

``import binser.serve`` imports neither FastAPI nor torch; the engine and the app are
imported from their modules.
"""
