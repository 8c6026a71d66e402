//go:build !rbd

package rbd

import "testing"

// TestRBDNeedsTags says how to run this package: its tests build the
// daemon with librbd, and `make rbd` (part of `make test`) runs them so.
func TestRBDNeedsTags(t *testing.T) {
	t.Skip("the rbd tests run with -tags rbd,pacific (make rbd)")
}
