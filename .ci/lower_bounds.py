"""Pins every dependency of pyproject.toml (and its test extra) at the lower bound it states.

  python .ci/lower_bounds.py > oldest.txt && pip install -c oldest.txt -e ".[test]"

installs the oldest stack bnjax supports, so that a bound raised by new code
fails CI instead of a user's install. Generated from pyproject.toml each
time, so the two cannot drift apart; a dependency without a `>=` bound is an
error.
"""

import os
import re
import sys
import tomllib

PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "pyproject.toml")


def lower_bounds(project: dict, extras: tuple[str, ...] = ("test",)) -> list[str]:
  """`name==version` for each requirement of the project and of `extras`, at its `>=` bound."""
  requirements = list(project["dependencies"])
  for extra in extras:
    requirements += project["optional-dependencies"][extra]
  pins = []
  for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*(,.*)?",
                         requirement)
    if not match:
      raise SystemExit(f"{requirement!r} in pyproject.toml states no lower bound (name>=version);"
                       " give it one.")
    pins.append(f"{match.group(1)}=={match.group(3)}")
  return pins


def main() -> None:
  with open(PYPROJECT, "rb") as f:
    project = tomllib.load(f)["project"]
  print("\n".join(lower_bounds(project)))


if __name__ == "__main__":
  sys.exit(main())
