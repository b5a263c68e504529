"""The namespace lab: the paper's GNS3 testbed on one Linux host (``beatd lab up|demo|dump|down``).

``topology`` reads the TOML topology, ``netns`` builds namespaces/links/routes, ``traffic`` sends
exact packets (scapy) and load, ``lab`` runs a beatd per router and gathers what they recorded.
"""
