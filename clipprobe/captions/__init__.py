"""Caption co-occurrence in LAION-scale parquet: do the training captions carry the stereotype?

Data flows one way::

    lexicon.py (group terms, data)  +  taxonomy words
        -> matching.py (THE matching rule; Hyperscan over whole record batches)
        -> scan.py (row groups -> count arrays; local process-pool engine)
           spark.py (the same scan function in Spark tasks)
        -> run.py (inputs, resumable per-file parts, outputs) -> stats.py -> figures.py

Public entry points: :func:`clipprobe.captions.run.count_captions` with a
:class:`~clipprobe.captions.run.CountConfig`, :func:`~clipprobe.resources.lexicon.get_lexicon`,
:class:`~clipprobe.captions.matching.Matcher`. Heavy libraries are imported
inside functions, so importing this package is cheap.
"""
