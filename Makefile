# The two commands: `make demo` and `make test`. Both run `make setup` first, which
# installs what is missing (see scripts/setup.sh) and is a no-op otherwise.
.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q

clean:
	rm -rf build
