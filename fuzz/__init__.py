"""Fuzzing: parser targets (``targets.py``) run by hypothesis in the tests and by atheris (``fuzz.py``)."""
