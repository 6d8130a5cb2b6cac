"""What every command of `st-adapter-fast` shares: the argument parser and help format, one-line errors and
warnings, and the check that a command's extra is installed. Imported by cli.py and by the modules that define
commands (bench/, video/commands.py), so that none of them imports another."""
import argparse
import importlib.util
import re
import sys


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help followed by its default, unless it has none worth showing (None, False) or the
    help already speaks of it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "default" in text or text == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """A usage error is one line, `st-adapter-fast: error: ...` with the command, not the whole usage."""

    def error(self, message):
        self.exit(2, f"st-adapter-fast: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


# Argument types of integer options: argparse names the flag in their errors ("argument --size: must be >= 1").
positive_int, nonnegative_int = _int_at_least(1), _int_at_least(0)


def renamed_error(error, flag_of):
    """`error` (a ValueError / TypeError of an API whose message starts with an argument's name, as in
    "size must be even" or "layers=[99]: ...") naming that argument as `flag_of(name)` says (a flag, a config
    key) instead; `error` itself when its message starts with no name `flag_of` knows (returns None for)."""
    message = str(error)
    match = re.match(r"(\w+)(?:(=)|(?=[\s:]|$))", message)
    flag = flag_of(match.group(1)) if match else None
    if flag is None:
        return error
    return type(error)(flag + (" " if match.group(2) else "") + message[match.end():])


def flag_namer(*names):
    """For renamed_error: the flag --x-y of an argument x_y (of those in `names`, if given)."""
    return lambda name: "--" + name.replace("_", "-") if not names or name in names else None


def print_error(message):
    print(f"st-adapter-fast: error: {message}", file=sys.stderr)


def print_warning(message):
    print(f"st-adapter-fast: warning: {message}", file=sys.stderr)


class MissingExtra(ImportError):
    """A command's dependencies beyond the kernel library are not installed."""


PIP_NAMES = {"yaml": "pyyaml"}   # import name -> distribution name, where they differ


def require(extra, modules, what):
    """Raise MissingExtra, naming the extra of pyproject.toml that installs them, when any of `modules`
    (import names) is not installed; `what` names what needs them (a command)."""
    missing = [PIP_NAMES.get(name, name) for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                           f'installed: pip install "st-adapter-fast[{extra}]"')
