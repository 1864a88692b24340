"""Command lines derived from an experiment's ``Config`` dataclass.

Every field ``some_name`` becomes a flag ``--some-name`` whose type follows the
annotation: ``int``, ``float``, ``str``, ``bool`` (``--x`` / ``--no-x``),
``T | None`` (as ``T``), ``tuple[T, ...]`` (comma- or space-separated) and
fixed tuples such as ``tuple[int, int, int]`` (``x``-separated: ``8x16x5``).
A field's ``metadata["help"]`` is its help text (``argparse.SUPPRESS`` hides
the flag). ``--quick`` starts from ``Config().quick()``, the shrunken smoke
run, as big_vision's ``runlocal`` switch does; flags given explicitly
override either. The field ``quick_mode``, which ``quick()`` sets, has no
flag of its own.

Only the given flags reach the dataclass, so its ``__post_init__`` validates
the result and its errors name the field.

References:
  L. Beyer, X. Zhai, A. Kolesnikov, "Big Vision", GitHub repository
  google-research/big_vision (2022), configs with ``get_config(arg)`` and
  ``runlocal``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from jaxsoftmax import reporting

C = TypeVar("C")


def _parser_for(annotation: Any) -> tuple[Any, dict[str, Any]]:
  """(converter, extra add_argument options) for a field's annotation."""
  args = typing.get_args(annotation)
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    (inner,) = [a for a in args if a is not type(None)]
    return _parser_for(inner)
  if typing.get_origin(annotation) is tuple and args[-1] is Ellipsis:
    item, _ = _parser_for(args[0])
    return (lambda text: tuple(item(t) for t in text.split(",") if t)), {
        "nargs": "+"}
  if typing.get_origin(annotation) is tuple:
    items = [_parser_for(a)[0] for a in args]
    return (lambda text: tuple(
        f(t) for f, t in zip(items, text.split("x"), strict=True))), {}
  if annotation is bool:
    return None, {"action": argparse.BooleanOptionalAction}
  if annotation in (int, float, str):
    return annotation, {}
  raise TypeError(f"no command-line flag for a field of type {annotation!r}")


def parse(config_type: type[C], argv: list[str] | None = None, *,
          description: str | None = None) -> C:
  """The ``config_type`` instance that ``argv`` (default: sys.argv) asks for.

  Args:
    config_type: a dataclass with defaults for every field and a ``quick()``
      method.
    argv: the arguments after the program name.
    description: the ``--help`` text.

  Returns:
    ``config_type()`` (or its ``quick()``) with the given flags replaced.
  """
  parser = argparse.ArgumentParser(description=description,
                                   argument_default=argparse.SUPPRESS)
  parser.add_argument("--quick", action="store_true", default=False,
                      help="the shrunken smoke run (Config.quick())")
  hints = typing.get_type_hints(config_type)
  defaults = config_type()
  for field in dataclasses.fields(config_type):
    if field.name == "quick_mode":
      continue
    convert, options = _parser_for(hints[field.name])
    if convert is not None:
      options["type"] = convert
    default = getattr(defaults, field.name)
    if isinstance(default, tuple):
      default = ",".join(
          "x".join(map(str, d)) if isinstance(d, tuple) else str(d)
          for d in default)
    help_text = field.metadata.get("help", "")
    if help_text != argparse.SUPPRESS:
      help_text = f"{help_text} (default: {default})".strip()
    parser.add_argument("--" + field.name.replace("_", "-"), help=help_text,
                        **options)
  given = vars(parser.parse_args(argv))
  for name, value in given.items():
    # nargs="+": one tuple per word; "--ks 1,2 3" and "--ks 1 2 3" agree.
    if isinstance(value, list):
      given[name] = tuple(item for part in value for item in part)
  config = defaults.quick() if given.pop("quick") else defaults
  try:
    return dataclasses.replace(config, **given)
  except (TypeError, ValueError) as e:
    parser.error(str(e))


def check_positive(config: Any, names: tuple[str, ...]) -> None:
  """Raises ValueError naming the first of ``names`` whose value (each item
  of a tuple) is below 1; None passes."""
  for name in names:
    value = getattr(config, name)
    items = value if isinstance(value, tuple) else (value,)
    if value is not None and min(items, default=0) < 1:
      raise ValueError(f"{name} must be positive, got {value}")


def main(config_type: type[C], run: Any, report: Any, name: str,
         description: str, argv: list[str] | None = None) -> dict[str, Any]:
  """The command line of a script whose ``run(config, workdir)`` draws a
  figure: parse, run into the results folder, report, save
  ``results/<name>[_quick].json``."""
  config = parse(config_type, argv, description=description)
  results = run(config, reporting.RESULTS_DIR)
  report(results)
  suffix = "_quick" if config.quick_mode else ""
  path = reporting.save_results(f"{name}{suffix}", results)
  print(f"wrote {path} and {results['figure']}")
  return results
