"""``NamedRegistry``: a detectron2/fvcore ``Registry`` whose entries have short YAML names."""

from typing import Any, Callable, Dict, Iterator, Tuple

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
        self.short_names: Dict[str, str] = {}  # config name -> registered class name

    def register_as(self, name: str) -> Callable[[Any], Any]:
        """Class decorator: register the class (under its class name, fvcore's public way) and
        make ``name`` resolve to it."""

        def deco(cls):
            self.register(cls)
            self.short_names[name] = cls.__name__
            return cls

        return deco

    def get(self, name: str) -> Any:
        return super().get(self.short_names.get(name, name))

    def __contains__(self, name: str) -> bool:
        return super().__contains__(self.short_names.get(name, name))

    def __iter__(self) -> Iterator[Tuple[str, Any]]:
        """(short name, class) for the classes that have one, (class name, class) otherwise."""
        long_to_short = {v: k for k, v in self.short_names.items()}
        for name, obj in super().__iter__():
            yield long_to_short.get(name, name), obj

    def build(self, key: str, name: str, *args, **kwargs) -> Any:
        """The entry ``name`` (the value of config key ``key``) called with the arguments."""
        if name not in self:
            known = sorted(n for n, _ in self)
            raise ValueError(f"{key}={name!r} is not a registered {self.what}; known: {known}")
        return self.get(name)(*args, **kwargs)
