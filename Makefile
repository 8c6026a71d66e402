# The two commands the README opens with:
#   go run ./cmd/stackd     serve the embedded default export
#   make test               install the test peers if missing, then run everything
GO ?= go

.PHONY: test deps vet unit rbd build build-rbd bench

test: deps vet unit rbd

deps:
	./scripts/install-test-deps.sh

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@# The rbd build needs librbd's headers; without them (and not under
	@# CI=true, where deps has installed them) it is skipped, as the rbd
	@# tests are.
	@if [ -e /usr/include/rbd/librbd.h ] || [ "$$CI" = true ]; then \
		echo "$(GO) vet -tags $(RBD_TAGS) ./..."; $(GO) vet -tags $(RBD_TAGS) ./...; \
	else echo "vet: no librbd headers (Debian: librbd-dev); the rbd build is not vetted"; fi

# -count=1: tests/ build and run stackd and real peers at run time, which the
# test cache cannot see, so a cached pass could hide a regression.
unit:
	$(GO) test -race -count=1 -timeout 30m ./...

# The rbd target's tests: the daemon built with librbd (the tags below),
# over a one-node Ceph cluster the tests start, with real NBD peers (about
# 30 s). tests/rbd builds only with the tag; the rest of the tree is the
# same code either way, and unit has run it.
rbd:
	$(GO) test -race -count=1 -timeout 10m -tags $(RBD_TAGS) ./tests/rbd

build:
	$(GO) build -o bin/stackd ./cmd/stackd

# The rbd target needs cgo and librbd (Debian: librbd-dev); go-ceph is
# built for Ceph Pacific, Debian 12's.
RBD_TAGS = rbd,pacific
build-rbd:
	$(GO) build -tags $(RBD_TAGS) -o bin/stackd ./cmd/stackd

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bioset ./stack ./targets ./metrics
