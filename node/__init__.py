"""The composition root: replica process, gRPC transport and client API, WAL, config, CLI.

Only ``node`` (and ``sim``) may do IO and wire the cores together; a replica
process drives the very core objects the simulator drives (``node.driver``).

TLS 1.3 only.  grpcio's Python API cannot set a minimum TLS version, so the
TLS 1.2 cipher list is narrowed to one suite that our ECDSA certificates cannot
use: a TLS 1.2 handshake then finds no shared cipher and fails, while TLS 1.3
(whose suites that list does not govern) is unaffected.  gRPC reads the variable
when it is first imported, so it is set here, before any ``node`` module imports
``grpc``; ``tests/node/test_transport.py`` checks a TLS 1.2 client is refused.
"""

import os
import sys
import warnings

TLS12_CIPHER_SUITES = "ECDHE-RSA-AES128-GCM-SHA256"  # RSA only; every key here is ECDSA
os.environ["GRPC_SSL_CIPHER_SUITES"] = TLS12_CIPHER_SUITES

if "grpc" in sys.modules:  # too late to narrow the cipher list: say so rather than pretend
    warnings.warn(
        "grpc was imported before node: TLS 1.2 stays possible in this process",
        RuntimeWarning,
        stacklevel=2,
    )
