# The two commands the README opens with:
#   go run ./cmd/stackd     serve the embedded default export
#   make test               install the test peers if missing, then run everything
GO ?= go

.PHONY: test deps vet unit build build-rbd bench

test: deps vet unit

deps:
	./scripts/install-test-deps.sh

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags $(RBD_TAGS) ./...

# -count=1: tests/ build and run stackd and real peers at run time, which the
# test cache cannot see, so a cached pass could hide a regression.
unit:
	$(GO) test -race -count=1 -timeout 30m ./...

build:
	$(GO) build -o bin/stackd ./cmd/stackd

# The rbd target needs cgo and librbd (Debian: librbd-dev); go-ceph is
# built for Ceph Pacific, Debian 12's.
RBD_TAGS = rbd,pacific
build-rbd:
	$(GO) build -tags $(RBD_TAGS) -o bin/stackd ./cmd/stackd

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bioset ./stack ./targets ./metrics
