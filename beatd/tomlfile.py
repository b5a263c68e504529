"""Reading a TOML file for any of BEAT's files (configuration, lab topology, SLA): one place for
the two ways it fails, each raised as the caller's own error class with the path in the message."""
import tomllib


def read_toml(path, error, what):
    """The TOML document at ``path``; ``error(message)`` is raised for an unreadable file (naming
    ``what`` it should have been) or a file that is not valid TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
