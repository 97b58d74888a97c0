# The two commands: `make demo` and `make test`. Both run `make setup` first, which
# installs what is missing (see scripts/setup.sh) and is a no-op otherwise.
.PHONY: setup demo test fuzz soak clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q --durations=15

# The long runs; `make test` runs a short sample of each.
fuzz: setup
	.venv/bin/python -m microtile.check.fuzz_ops --cases 2000 --kernels both
	.venv/bin/python -m microtile.check.fuzz_model --mutants 1000
	.venv/bin/python -m microtile.check.fuzz_link --seconds 180

SHARED ?= $(or $(MICROTILE_SHARED),../shared)
soak: setup
	@test -f $(SHARED)/models/mlperf_tiny/kws_ref_model.tflite || { echo "soak: needs the MLPerf Tiny data in $(SHARED) (or MICROTILE_SHARED)"; exit 2; }
	mkdir -p build
	.venv/bin/python -m microtile.measure.soak $(SHARED)/models/mlperf_tiny/kws_ref_model.tflite --inferences 16000 \
		--labels $(SHARED)/datasets/kws01/y_labels.csv --json build/soak.json

clean:
	rm -rf build
