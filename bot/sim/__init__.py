"""The built-in Vast.ai simulator: HTTP API (``api``), offer catalogues (``catalog``) and instance SSH (``sshd``)."""
