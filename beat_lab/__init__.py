"""The BEAT testbed (``beat-lab``): what a lab needs around the router daemon, none of which a
router runs.

- ``lab``, ``netns``, ``topology``, ``traffic``: the paper's testbed on one Linux host, a network
  namespace per host and router, a beatd per router (``beat-lab up|demo|dump|down``; root; scapy,
  ``pip install 'beat[lab]'``, for the exact packets);
- ``demo``: router r2's bundled capture through beatd's pipeline (``beat-lab demo --offline``);
- ``gns3``: the same topology as a GNS3 project, and the BEAT images' appliance files;
- ``ca``: the lab CA and the Interrogation service's mutual-TLS certificates (``beat-lab certs``);
- ``data``: the package data (``topologies/*.toml``, ``capture/``), found with importlib.resources.
"""
