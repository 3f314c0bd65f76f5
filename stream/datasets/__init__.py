"""Benchmark datasets built from real data that ships offline, in the windows.jsonl format that
``mmstream train`` and ``mmstream eval`` read (see operators/train.py). ``avdigits``: handwritten
digit scans, the same digit spoken by synthetic voices in noise, and Whisper's transcript of it."""
