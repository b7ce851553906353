# Tandem developer entry points. `make serve` and `make test` are the two the README promises.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0

.PHONY: setup serve test browser proto proto-check lint-proto check-deploy node-setup node-gen bench eval clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Which torch build `make setup` installs, on purpose: TORCH=cpu (the default) is the CPU-only wheel from
# PyTorch's CPU index (a few hundred MB); TORCH=cuda is PyPI's default Linux wheel, built with CUDA (several GB).
# torch goes first and pinned: one pulled in by sentence-transformers would be PyPI's CUDA build.
TORCH ?= cpu
TORCH_SPEC_cpu := "torch==$(TORCH_VERSION)+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
TORCH_SPEC_cuda := "torch==$(TORCH_VERSION)"

setup: $(BIN)/python
	@test -n '$(TORCH_SPEC_$(TORCH))' || (echo "TORCH=$(TORCH): use TORCH=cpu or TORCH=cuda" && exit 2)
	$(BIN)/pip install -q --upgrade pip
	@# A +cpu wheel already on this machine's pip sources (find-links, a mirror) is used as it is: PyPI has none, so
	@# elsewhere the first try fails at once and the second goes to PyTorch's CPU index.
	$(if $(filter cpu,$(TORCH)),$(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null ||) $(BIN)/pip install -q $(TORCH_SPEC_$(TORCH))
	$(BIN)/pip install -q -e '.[dev]'

serve: setup
	$(BIN)/tandem serve

# Test modules run side by side, one per core (at most 4: each starts real servers); a module stays on one
# worker, so its shared servers start once. TEST_JOBS=0 runs them in this process, one after another.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

# Installs the Node test clients too when npm is here (no root needed); the suites that still cannot run are
# listed at the end with the command that enables them.
test: setup
	@if command -v npm >/dev/null && { [ ! -d node_modules/@grpc/grpc-js ] || [ ! -d examples/node/gen ]; }; then \
	  $(MAKE) --no-print-directory node-setup || echo "npm ci failed: the Node client suites will be skipped"; fi
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  $(MAKE) --no-print-directory browser || echo "no chromium: the console's browser tests will be skipped"; fi
	$(BIN)/python -m pytest -q --durations=10 -n $(TEST_JOBS) --dist loadfile

# Debian's chromium, which the console's browser tests drive (Playwright's own browser download is not used).
# Needs root and apt-get; elsewhere install a Chromium and set TANDEM_TEST_CHROMIUM to its binary.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Regenerates tandem/v1/*_pb2*.py from proto/. Never edit the generated files.
proto:
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. proto/tandem/v1/*.proto

proto-check: proto
	git diff --exit-code -- tandem/ || (echo "generated code is stale: run 'make proto' and commit" && exit 1)

node-setup:
	npm ci --no-audit --no-fund --loglevel=error
	$(MAKE) --no-print-directory node-gen

# Regenerates examples/node/gen/ (the Connect client's ES code, git-ignored) from proto/ with protoc-gen-es.
node-gen:
	rm -rf examples/node/gen
	node_modules/.bin/buf generate
	echo '{"type": "module"}' > examples/node/gen/package.json

# buf lint (STANDARD rules), then no breaking change against the last released contract.
# After a release: node_modules/.bin/buf build proto -o proto/releases/tandem-vX.Y.Z.binpb
RELEASED_CONTRACT := proto/releases/tandem-v0.1.0.binpb
lint-proto:
	node_modules/.bin/buf lint proto
	node_modules/.bin/buf breaking proto --against $(RELEASED_CONTRACT)

# promtool, Kubernetes schemas (kubernetes-validate), compose schema, dashboard/metric cross-checks.
check-deploy:
	$(BIN)/python -m pytest -q tests/test_deploy.py

bench: setup
	$(BIN)/tandem bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
