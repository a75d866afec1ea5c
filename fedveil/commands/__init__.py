"""The ``fedveil`` commands: the layer on top of the foundation (``fedveil.config``, ``fedveil.store``).

Nothing in the foundation imports from here.
"""
