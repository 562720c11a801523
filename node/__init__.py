"""The composition root: replica process, CLI, and (later) gRPC, WAL and config.

Only ``node`` (and ``sim``) may do IO and wire the cores together.  Today it
holds the ``aegis`` command line; the networked replica arrives with the
cluster issue and will drive the same core objects the simulator drives.
"""
