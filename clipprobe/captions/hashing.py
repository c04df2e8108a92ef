"""The hash constants shared by the token tables (built in Python) and the compiled pass that reads them.

One owner for both sides: :mod:`clipprobe.captions.tokens` builds the vocabulary bitmap, the token
table and the trie with these values, and :mod:`clipprobe.captions._tokenpass` probes them with the
same ones. Standard library only, so importing it never pulls in numba.
"""

MIX = 0x9E3779B97F4A7C15   # multiplicative (Fibonacci) hashing of packed tokens and of trie edges
BITMAP_BITS = 16           # hash bits of the vocabulary bitmap (8 KiB: stays in L1)
