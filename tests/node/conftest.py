"""Import ``node`` before anything imports ``grpc``: it narrows gRPC's TLS 1.2 ciphers
(see ``node/__init__.py``), which gRPC reads once, when it is first imported."""

import node  # noqa: F401
