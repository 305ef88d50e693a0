"""The registry of saliency methods: each method named once, with everything about it.

An entry (:class:`Method`) holds a method's name -- or, for a family of names such as
``"layers-top2"``, their common prefix and a parser of the rest --, whether it needs a
decomposition, the function computing its maps and a one-line description. Methods
are registered with the decorator :func:`register` (in :mod:`refbbp.evaluate.methods`);
name validation (:func:`lookup`, :func:`resolve`), the list of valid names in error
messages (:func:`method_syntaxes`) and the dispatch of
:func:`~refbbp.evaluate.methods.saliency_maps` all read :data:`METHODS`.

Two kinds of method:

* **decomposition methods**, ``compute(dec, *args) -> maps``: computed from one shared
  :func:`~refbbp.explain.decompose.decompose` per batch of inputs;
* **input methods**, ``compute(net, x, classes, rng, *args) -> maps``: computed from
  the inputs directly (``rng`` is a :class:`numpy.random.Generator`).

Any callable ``f(net, x, classes) -> maps`` can be given instead of a name
(:func:`resolve` wraps it as an input method); it is reported under its ``__name__``.

>>> method_syntaxes()  # doctest: +NORMALIZE_WHITESPACE
['gradient', 'fullgrad', 'fullgrad-official', 'fullgrad-official-2019', 'layers-all',
 'layers-topK', 'layers-from:N', 'activity:N', 'biasgrad:N', 'bias', 'bias-deviation',
 'random']
>>> entry, args = lookup("layers-top2-noinput")
>>> entry.key, entry.decomposition, args
('layers-', True, ('top2', False))
>>> print(METHODS["bias"].description)
BBp (sign rule, T = 1): |beta| summed over channels
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["METHODS", "Method", "lookup", "method_name", "method_syntaxes", "register",
           "resolve"]


@dataclass(frozen=True)
class Method:
    """One entry of the method registry.

    Attributes
    ----------
    key : str
        The method's name, or for a family of names (``parse`` given) their prefix.
    syntax : tuple of str
        The names as listed to users (``("layers-all", "layers-topK", ...)``).
    description : str
        One line.
    compute : callable
        ``compute(dec, *args)`` for a decomposition method, else
        ``compute(net, x, classes, rng, *args)``; returns the maps of a batch.
    decomposition : bool
        Whether ``compute`` takes a :class:`~refbbp.explain.decompose.Decomposition`.
    parse : callable or None
        ``parse(name) -> args`` for a family of names (raises ValueError on a name it
        does not understand); None for a single name (no arguments).
    """

    key: str
    syntax: tuple
    description: str
    compute: Callable
    decomposition: bool = False
    parse: Callable | None = None


#: The registered methods by key, in registration order (the order of error messages).
METHODS: dict[str, Method] = {}


def register(key, description, *, decomposition=False, parse=None, syntax=None):
    """Decorator registering ``compute`` as the method ``key`` in :data:`METHODS`.

    Parameters
    ----------
    key : str
        The name, or with ``parse`` the prefix of the names of a family.
    description : str
        One line.
    decomposition : bool
        ``compute(dec, *args)`` (True) or ``compute(net, x, classes, rng, *args)``.
    parse : callable, optional
        ``parse(name) -> tuple of args`` for a family of names.
    syntax : tuple of str, optional
        The names as listed to users (default ``(key,)``).
    """
    def deco(compute):
        if key in METHODS:
            raise ValueError(f"method {key!r} is registered twice")
        METHODS[key] = Method(key, tuple(syntax or (key,)), description, compute,
                              decomposition, parse)
        return compute
    return deco


def method_syntaxes():
    """Every valid method name or name pattern, in registration order (list of str)."""
    return [s for entry in METHODS.values() for s in entry.syntax]


def lookup(name):
    """The registry entry of a method name and the arguments the name carries.

    Parameters
    ----------
    name : str

    Returns
    -------
    (Method, tuple)

    Raises
    ------
    ValueError
        The name is no method, or a family's parser does not understand it.
    """
    entry = None
    if isinstance(name, str):
        entry = METHODS.get(name) or next((e for e in METHODS.values() if e.parse is not None
                                           and name.startswith(e.key)), None)
    if entry is None:
        raise ValueError(f"unknown method {name!r}: expected one of "
                         f"{', '.join(method_syntaxes())}, or a callable")
    return entry, (entry.parse(name) if entry.parse is not None else ())


def method_name(method):
    """The name a method is reported under (a callable's ``__name__``)."""
    if isinstance(method, str):
        return method
    return getattr(method, "__name__", repr(method))


def resolve(methods):
    """Check a list of methods and find each one's registry entry.

    Parameters
    ----------
    methods : sequence of str or callable

    Returns
    -------
    list of (str, Method, tuple)
        Per method: the name it is reported under, its entry (a callable
        ``f(net, x, classes)`` is wrapped as an input method) and the arguments its
        name carries.

    Raises
    ------
    ValueError
        Two methods share a name, or a name is not a method (:func:`lookup`).
    """
    names = [method_name(m) for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct, got {names}")
    plan = []
    for m, name in zip(methods, names, strict=True):
        if callable(m):
            entry = Method(name, (name,), "a callable", _call_user_method(m))
            plan.append((name, entry, ()))
        else:
            plan.append((name,) + lookup(m))
    return plan


def _call_user_method(f):
    """``f(net, x, classes)`` as an input method's ``compute``."""
    return lambda net, x, classes, rng: f(net, x, classes)
