"""One module per ``mmstream`` sub-command.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
``run(args) -> int``. Modules import heavy libraries (torch, aiokafka) inside ``run`` so that
``mmstream --help`` stays instant. ``stream.cli`` discovers the modules; adding a command means
adding a file here.
"""
