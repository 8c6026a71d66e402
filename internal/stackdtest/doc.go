// Package stackdtest is what stackd's tests share, so that each mechanism
// is written once: running the real daemon (Build, Start, Daemon), waiting
// for a bio (Await) or a WaitGroup (Within), a one-node Ceph cluster
// (StartCeph), running a peer or a tool within a bound (Run, MustRun), a
// short directory for sockets (SocketDir), a log buffer safe to read while
// written (SyncBuffer), an HTTP GET (HTTPGet), the TLS tests' certificates
// (GenerateCerts), and telling a missing prerequisite from a failure
// (Missing). It is internal: only stackd's own tests import it, and it
// imports nothing of stackd's but bioset. (The one goroutine-leak check is
// go.uber.org/goleak itself: `defer goleak.VerifyNone(t,
// goleak.IgnoreCurrent())` at the top of a test.)
package stackdtest
