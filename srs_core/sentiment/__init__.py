"""Text polarity of every utterance with cnsenti, streamed, parallel and resumable.

Modules: ``scoring`` (cnsenti of one text, and of one chunk of dialogs: what a worker process
does) and ``run`` (``run_sentiment`` / ``sentiment_of_split``: chunks, pool, resumption, and
``read_polarity`` of the output).

Output (JSON Lines, one line per dialog of the input, in input order)::

    {"line": 12, "pos": 3.0, "neg": 0.0,
     "utterances": [{"id": 52000, "pos": 2.0, "neg": 0.0, "words": 5, "sentences": 1}, ...]}

``line`` is the dialog's 1-based line in ``release_<split>.json`` and ``id`` the message id;
``pos``/``neg``/``words``/``sentences`` are cnsenti's ``sentiment_calculate`` of the utterance
text with the word-separating spaces removed; the dialog's ``pos``/``neg`` are their sums (the
text polarity counts of DESIGN.md section 3). Next to the output, ``<name>.summary.json``
holds the counts, skips by reason and the time taken.
"""
