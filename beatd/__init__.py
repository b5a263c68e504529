"""beatd: the BEAT router daemon (capture, fast path, LMDB stores, replay, gRPC service).

``beatd replay FILE --node-id N`` runs a capture file through the same fast path and store as the
live daemon; see ``beatd.cli``.
"""
__version__ = "0.1.0"
