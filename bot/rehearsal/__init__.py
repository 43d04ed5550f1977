"""Rehearsals: the real rental service and watch engine played against the simulated world of
``bot.sim`` (``play`` → ``RunResult``), and ``python -m bot demo`` printing what they did."""
