# dmsim: `make demo` and `make test` work on a fresh machine (they create .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_TRACE := traces/real/vm4g-modules-bpf-secretmem.trace.gz

.PHONY: venv demo test bench bench-scale lint clean record-real traces-readme fuzz

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# --verify exits 1 on any mismatch; on this trace DirectMap4k/2M differ by the
# boot-time BPF pack's splits, which no trace shows (README: fidelity), so the
# demo reports that instead of failing.
demo: $(STAMP)
	$(BIN)/dmsim replay --verify $(DEMO_TRACE) || echo "(mismatches above: see README, 'What is modelled')"
	$(BIN)/dmsim replay --format meminfo $(DEMO_TRACE)
	$(BIN)/dmsim replay $(DEMO_TRACE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# bench/limit/: the C yardstick the ftrace ingest figure is printed beside (skipped,
# with a note, without a C compiler).
CC ?= cc
build/ftrace_scan: bench/limit/ftrace_scan.c
	@mkdir -p build
	@if command -v $(CC) >/dev/null 2>&1; then $(CC) -O2 -o $@ $<; \
	else echo "note: no C compiler ($(CC)): bench/limit/ is skipped, no C figures"; fi

bench: $(STAMP) build/ftrace_scan
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.gen
	$(BIN)/python -m bench.ingest

# The peak memory of a 100 M-event replay (about 14 GB of ftrace text through a pipe,
# and the native text of the same events): minutes, so not part of make bench.
bench-scale: $(STAMP)
	$(BIN)/python -m bench.ingest --no-ingest --rss 100000000

# The property tests (core against the reference models) with many random examples:
# a search for disagreements, not part of CI (whose examples are fixed). Minutes.
# With them, the readers' fuzz test (mutated real and native traces: no exit 70).
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q \
		tests/test_reference_policies.py tests/test_reference_cpa.py tests/test_buddy_reference.py \
		tests/test_layout.py tests/test_shadow.py tests/test_fuzz_readers.py

lint: $(STAMP)
	$(BIN)/ruff check dmsim tests bench

# Re-record the real traces under qemu (slow; not part of CI). See record/README.md.
record-real:
	bash record/harness.sh

traces-readme: $(STAMP)
	$(BIN)/python record/traces_readme.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# The generated traces in traces/ (dmsim gen, dmsim/configs/scenarios/), then traces/README.md.
GEN_SCENARIOS := boot modules bpftrace bpftrace-nopack secretmem mix
.PHONY: traces
traces: $(STAMP)
	for s in $(GEN_SCENARIOS); do $(BIN)/dmsim gen $$s --seed 1 --scale 1 -o traces/gen-$$s.trace.gz --force || exit 1; done
	$(BIN)/python record/traces_readme.py

# docs/results.md: every shipped trace under every policy (tests/test_shipped_traces.py
# checks that the committed file is what this prints).
.PHONY: results
results: $(STAMP)
	$(BIN)/python -m dmsim.report.results -o docs/results.md
