"""The carrier side: synthetic call traffic, consent and privacy requests with the shapes and faults
real carriers produce, and `callpipe produce`, which publishes them or writes them to files.
Nothing in the stream runtime or the jobs depends on this package.
"""
