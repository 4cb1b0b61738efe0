"""ring/: the wire contract between domains.

Sans-IO: nothing here imports trio or any other xensim package. Every module
takes page views (``memoryview`` of 4096-byte pages) or bytes and returns
decoded records plus "notify needed".
"""
