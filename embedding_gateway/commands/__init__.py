"""Operator commands beside ``serve``: ``models``, ``pull``, ``prefetch``. Each prints its
progress on stderr and a summary on stdout, and returns the process's exit status."""
