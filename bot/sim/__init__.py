"""The simulated world the bot can be rehearsed against, built of fakes only: the Vast API
(``api`` over ``instances``, ``query``, ``faults``), offer catalogues (``catalog``), an SSH server
per instance (``sshd``), ComfyUI and the script host (``hosts``), scenarios (``scenarios``) and the
stage that plays them (``stage``). Nothing here runs the bot's own services."""
