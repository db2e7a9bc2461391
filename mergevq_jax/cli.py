"""absl entry points with clear errors for bad command lines and configs."""
from __future__ import annotations

import sys

from absl import app, flags


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: override of a missing key
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    print(f"error: config key {str(e).strip(chr(34))} does not exist (overrides given: "
          f"{overrides}); the keys are in mergevq_jax/config/<stage>.py (tokenizer_defaults, "
          f"mergear_defaults)",
          file=sys.stderr)
    sys.exit(2)
  except (TypeError, ValueError, flags.Error) as e:
    print(f"error: bad command line: {e}", file=sys.stderr)
    sys.exit(2)


def run(main):
  """app.run(main) where flag/config errors and ValueErrors print one line and exit 2."""
  def wrapped(argv):
    try:
      return main(argv)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  app.run(wrapped, flags_parser=_parse_flags)
