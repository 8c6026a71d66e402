package stackdtest

import (
	"fmt"
	"os"
	"testing"
)

// Missing reports that a real component a test needs (a peer such as
// nbdinfo or qemu, a tool such as strace, root) is not there: under
// CI=true, where scripts/install-test-deps.sh has installed everything, the
// test fails; elsewhere it is skipped, so that a developer without the
// component can still run the rest.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: every prerequisite must be in place; scripts/install-test-deps.sh installs them)", msg)
	}
	t.Skipf("%s; skipping", msg)
}
