"""absl entry points with one-line errors for every mistake a user can make on a command
line, and checks of output paths before any work is done.

`run(main)` is `app.run(main)` where a bad flag, config file or config key, a ValueError
(bad input, named by the code that found it), a missing optional package, a file-system
error on a user's path and a diverged run print one `error: ...` line (exit 2; 1 for a
diverged run; 130 for Ctrl-C). MERGEVQ_JAX_TRACEBACK=1 shows the traceback instead. absl
INFO logs (orbax, grain) are off unless --verbosity is given.
"""
from __future__ import annotations

import difflib
import os
import re
import sys

from absl import app, flags, logging

# Errors that are the user's input or environment, not a bug: one line, no traceback.
USER_ERRORS = (ValueError, ImportError, FileNotFoundError, FileExistsError,
               NotADirectoryError, IsADirectoryError, PermissionError, ConnectionError)


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _config_arg(argv) -> str | None:
  """The --config=FILE[:platform] value on a command line."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _check_config_file(argv) -> None:
  value = _config_arg(argv)
  if value is None:
    return
  path = value.split(":", 1)[0]
  if not os.path.isfile(path):
    fail(f"--config={value}: config file {path!r} not found (paths are relative to "
         f"{os.getcwd()}; the configs are in the repository's configs/)")


def _unknown_key_message(argv, key: str) -> str:
  """Which override names a missing key, the closest existing keys, and the schema."""
  from mergevq_jax.config import STAGES, load_config_file
  value = _config_arg(argv)
  path, _, platform = value.partition(":")
  config = load_config_file(path, platform or None)
  schema = STAGES.get(config.get("stage"), (None, None, "mergevq_jax/config/"))[2]
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    dotted = arg[len("--config."):].split("=", 1)[0]
    node = config
    for depth, part in enumerate(dotted.split(".")):
      if not hasattr(node, "keys") or part not in node:
        options = list(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(part, options, n=3)
        where = ".".join(dotted.split(".")[:depth]) or "the config"
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        return (f"{arg.split('=')[0]}: {where} has no key {part!r}{hint}; every key is in "
                f"{schema}")
      node = node[part]
  return f"config key {key} does not exist; every key is in {schema}"


def _root_message(e: BaseException) -> str:
  """The innermost cause's message, on one line."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def _parse_flags(argv):
  _check_config_file(argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: override of a missing key
    key = str(e.args[0]).splitlines()[0].strip("'\"") if e.args else "?"
    try:
      message = _unknown_key_message(argv, key)
    except Exception:  # noqa: BLE001 -- the plain message is still right
      message = f"config key {key!r} does not exist"
    fail(message)
  except (TypeError, ValueError, flags.Error) as e:
    flag = re.match(r"flag (--\S+): ", str(e))   # absl names the flag at the top only
    fail(f"bad command line: {flag.group(1) + ': ' if flag else ''}{_root_message(e)}")


def run(main):
  """app.run(main) with the errors above as one line each."""
  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax and grain are chatty at INFO
      logging.set_verbosity(logging.WARNING)
    if os.environ.get("MERGEVQ_JAX_TRACEBACK"):
      return main(argv)
    try:
      return main(argv)
    except FloatingPointError as e:
      fail(str(e), code=1)
    except KeyboardInterrupt as e:
      fail(f"interrupted{': ' + str(e) if str(e) else ''}", code=130)
    except USER_ERRORS as e:
      message = str(e) if isinstance(e, (ValueError, ImportError, ConnectionError)) else (
          f"{e.strerror}: {e.filename}" if getattr(e, "filename", None) else str(e))
      fail(message)
  app.run(wrapped, flags_parser=_parse_flags)


def output_file(path: str, flag: str = "--out", suffixes: tuple[str, ...] = ()) -> str:
  """Check an output file (local or gs://...) before the work that produces it: not a
  directory, a known suffix, its folder created if missing and writable. Returns the
  path."""
  from mergevq_jax import files
  if not path:
    raise ValueError(f"{flag} is required")
  if files.path(path).is_dir():
    raise ValueError(f"{flag}={path} is a directory; give a file name"
                     + (f" ending in {suffixes[0]}" if suffixes else ""))
  if suffixes and not path.lower().endswith(suffixes):
    raise ValueError(f"{flag}={path} must end in {' or '.join(suffixes)}")
  output_dir(os.fspath(files.path(path).parent), flag)
  return path


def output_dir(path: str, flag: str = "--out") -> str:
  """Check (and create) an output directory (local or gs://...) before the work that fills
  it."""
  from mergevq_jax import files
  if not path:
    raise ValueError(f"{flag} is required")
  if not files.is_local(path):
    if files.path(path).is_file():
      raise ValueError(f"{flag}={path} is a file, not a directory")
    files.path(path).mkdir(parents=True, exist_ok=True)
    return path
  parent = os.path.abspath(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"{flag}={path}: {parent} is a file, not a directory")
  if not os.access(parent, os.W_OK):
    raise ValueError(f"{flag}={path}: {parent} is not writable")
  os.makedirs(path, exist_ok=True)
  return path
