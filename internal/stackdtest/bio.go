package stackdtest

import (
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
)

// Await submits b on s and waits for it to end, however its device ends
// it: inside Submit, from a worker or from a rescuer. It fails the test if
// b has not ended within bound, which is how a deadlock shows; it returns
// b's error. b's completion is replaced.
func Await(t testing.TB, s *bioset.Submitter, b *bioset.Bio, bound time.Duration) error {
	t.Helper()
	done := make(chan struct{})
	b.SetEndIO(func(*bioset.Bio) { close(done) })
	s.Submit(b)
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatalf("%v bio at %d+%d did not end within %v", b.Op, b.Offset, b.Length, bound)
	}
	return b.Err()
}

// WaitFor polls cond until it holds, and fails the test if it does not
// within bound: what the test waits for happens on other goroutines (a
// connection to close, a budget to come back), and a bounded wait turns a
// hang into a failure that says what never happened.
func WaitFor(t testing.TB, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Within waits for wg for at most d, and reports whether it was done in
// time; past d, what wg waits for is left running, for the test to fail.
func Within(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
