"""Caption co-occurrence in LAION-scale parquet: do the training captions carry the stereotype?

Data flows one way::

    lexicon.py (group terms, data)  +  taxonomy words
        -> matching.py (THE matching rule; Hyperscan over whole record batches)
    inputs.py (paths, globs, folders, fsspec URLs -> parquet files; caption column types)
        -> scan.py (row groups -> count arrays; local engine: threads, or processes for Hyperscan)
           spark.py (the same scan function in Spark tasks, after a pre-flight task)
        -> run.py (resumable per-file parts, merged counts)
        -> clipprobe.analysis.cooccurrence (the statistics) -> figures.py

The command is wired in :mod:`clipprobe.pipeline.captions` (:func:`~clipprobe.pipeline.captions.count_captions`
with a :class:`~clipprobe.pipeline.captions.CountConfig`); its files are written by
:mod:`clipprobe.report.captions`. Public pieces: :func:`~clipprobe.resources.lexicon.get_lexicon`,
:class:`~clipprobe.captions.matching.Matcher`. Heavy libraries are imported
inside functions, so importing this package is cheap.
"""
