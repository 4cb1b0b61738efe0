"""xensim benchmarks: ``python -m bench NAME``.

Each benchmark is a module ``bench/<NAME>.py`` exposing ``run(quick: bool) ->
Report``. It measures xensim and its named baseline in the same run; the
runner prints the human table and, as the very last line, one JSON object with
the raw figures and ``ratio`` (xensim / baseline, higher is better unless the
benchmark says otherwise).
"""
