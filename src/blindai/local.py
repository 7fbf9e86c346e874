"""Old home of :class:`blindai.testing.LocalServer`; kept so that existing imports still work."""

from .testing import LocalServer

__all__ = ["LocalServer"]
