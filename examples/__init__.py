"""Model builders the examples, tests and benchmarks share (torch, transformers): outside the
client package, which installs neither. Import as ``examples.zoo`` / ``examples.export`` with the
repository root on ``sys.path`` (the example scripts put it there).
"""
