"""``NamedRegistry``: a detectron2/fvcore ``Registry`` whose entries have short YAML names."""

from typing import Any, Callable

from detectron2.utils.registry import Registry

__all__ = ["NamedRegistry"]


class NamedRegistry(Registry):
    """
    A ``Registry`` (``get``, ``in``, iteration as usual) whose classes are registered under short
    names chosen for configs (fvcore's ``register()`` uses the class name), and built from the
    config key that names them, with an error listing the known names.
    """

    def __init__(self, name: str, what: str):
        """
        Args:
            name (str): the registry's name.
            what (str): what an entry is, for error messages (e.g. "loss-weight schedule").
        """
        super().__init__(name)
        self.what = what

    def register_as(self, name: str) -> Callable[[Any], Any]:
        """Class decorator: register the class under ``name``."""

        def deco(cls):
            self._do_register(name, cls)
            return cls

        return deco

    def build(self, key: str, name: str, *args, **kwargs) -> Any:
        """The entry ``name`` (the value of config key ``key``) called with the arguments."""
        if name not in self:
            known = sorted(n for n, _ in self)
            raise ValueError(f"{key}={name!r} is not a registered {self.what}; known: {known}")
        return self.get(name)(*args, **kwargs)
