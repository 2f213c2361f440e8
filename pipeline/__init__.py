"""callpipe's record path (docs/ARCHITECTURE.md). The top level holds the pure chain, in the order a
record meets it: codec* (decode), validate, consent and policy, keys and pseudonymize, detect, chain;
plus settings and the `callpipe` command. Sub-packages: stream/ (the worker runtime), carrier/
(traffic simulators and `callpipe produce`), bench/ (`callpipe bench`).
"""
