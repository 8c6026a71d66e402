# The two commands the README opens with:
#   go run ./cmd/stackd     serve the embedded default export
#   make test               install the test peers if missing, then run everything
GO ?= go

.PHONY: test deps vet unit build bench

test: deps vet unit

deps:
	./scripts/install-test-deps.sh

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# -count=1: tests/ build and run stackd and real peers at run time, which the
# test cache cannot see, so a cached pass could hide a regression.
unit:
	$(GO) test -race -count=1 -timeout 30m ./...

build:
	$(GO) build -o bin/stackd ./cmd/stackd

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bioset ./stack ./targets ./metrics
