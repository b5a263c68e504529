"""The files beat_lab ships as package data (found with importlib.resources, never relative to a
checkout): the lab topologies (``topologies/*.toml``) and the capture of the offline demo
(``capture/r2.pcap`` with its beatd configuration ``capture/r2.toml``)."""
import os
from importlib import resources

__all__ = ["DataError", "data_path", "topology_path", "bundled_topologies"]

PACKAGE = "beat_lab"


class DataError(Exception):
    """A package data file that is missing or not on the file system; the message names it."""


def data_path(*parts):
    """The file system path of the package data file ``beat_lab/<parts...>``."""
    res = resources.files(PACKAGE)
    for part in parts:
        res = res.joinpath(part)
    name = "/".join((PACKAGE,) + parts)
    try:
        path = os.fspath(res)
    except TypeError:
        raise DataError(f"{name}: the package data is not on the file system ({res!r}); install "
                        "beat as a directory (pip install), not as a zip") from None
    if not os.path.exists(path):
        raise DataError(f"{name}: missing from the installed package ({path}); reinstall beat")
    return path


def bundled_topologies():
    """The names of the bundled topologies (``paper``, ``line4``, ...), sorted."""
    folder = resources.files(PACKAGE).joinpath("topologies")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def topology_path(topology=None):
    """The path of a lab topology: ``None`` -> the paper's testbed; a bundled name (``paper``,
    ``line4``) when no such file exists here -> its package data file; else the file given."""
    if topology is None:
        return data_path("topologies", "paper.toml")
    topology = os.fspath(topology)
    if not os.path.exists(topology) and os.sep not in topology and \
            topology.removesuffix(".toml") in bundled_topologies():
        return data_path("topologies", topology.removesuffix(".toml") + ".toml")
    return os.path.abspath(topology)
