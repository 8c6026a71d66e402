package stackdtest

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Run runs an external command, a peer or a tool, within timeout and the
// test's context, and returns its combined output. An error the timeout
// caused says so and how long the command ran.
func Run(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v after %v)", err, ctx.Err(), time.Since(start).Round(time.Millisecond))
	}
	return string(out), err
}

// MustRun is Run, failing the test, with the command's output, unless
// the command succeeds.
func MustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := Run(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", Cmdline(name, args), err, out)
	}
	return out
}

// Cmdline is the command as a shell would take it, quoted where it must
// be, for messages that show it.
func Cmdline(name string, args []string) string {
	var b strings.Builder
	b.WriteString(name)
	for _, a := range args {
		b.WriteByte(' ')
		if a == "" || strings.ContainsAny(a, " \t\n'\"?&$*;|<>()") {
			b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}
