// Command profile serves a stackd configuration in process, like
// cmd/stackd but without metrics, and profiles a window of its life: the
// CPU, the allocations, mutex contention and blocking between the signals
// SIGUSR1 (start) and SIGUSR2 (stop). bench/run.sh starts it, prefills the
// export, sends SIGUSR1, runs fio, sends SIGUSR2 and then SIGTERM.
//
//	profile -socket PATH -out DIR [-config FILE]
//
// On SIGUSR2 it writes to DIR:
//
//	cpu.pprof                    CPU profile of the window
//	allocs-start.pprof, allocs-end.pprof
//	                             allocation profiles at both ends; the
//	                             window is their difference
//	                             (go tool pprof -base allocs-start.pprof ...)
//	mutex.pprof, block.pprof     contention and blocking in the window
//	window.json                  runtime counters over the window: heap
//	                             objects allocated, bytes allocated, GC
//	                             cycles, GC pause, process CPU time
//
// Without -config it serves the embedded default (a 1 GiB stack: split,
// stripe over 4 legs, memory), export "default".
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/nbd"
)

func main() {
	socket := flag.String("socket", "", "unix socket to serve on (required)")
	out := flag.String("out", ".", "directory for the profiles")
	config := flag.String("config", "", "configuration file (default: the embedded default); its listeners and metrics are ignored")
	memRate := flag.Int("memprofilerate", 64<<10, "runtime.MemProfileRate: one sample per this many bytes allocated")
	mutexFrac := flag.Int("mutexfraction", 5, "runtime.SetMutexProfileFraction during the window")
	blockRate := flag.Int("blockrate", 10000, "runtime.SetBlockProfileRate (ns) during the window")
	flag.Parse()
	runtime.MemProfileRate = *memRate
	if *socket == "" {
		log.Fatal("profile: -socket is required")
	}

	cfg := configs.Default()
	if *config != "" {
		var err error
		if cfg, err = configs.Load(*config); err != nil {
			log.Fatalf("profile: %v", err)
		}
	}
	var exports []nbd.ExportConfig
	for _, e := range cfg.Exports {
		st, err := e.Build(nil)
		if err != nil {
			log.Fatalf("profile: export %q: %v", e.Name, err)
		}
		defer st.Close()
		exports = append(exports, e.ServerExport(st.Root))
	}
	opts := cfg.Limits.ServerOptions()
	opts.Exports = exports
	srv, err := nbd.NewServer(opts)
	if err != nil {
		log.Fatalf("profile: %v", err)
	}
	os.Remove(*socket)
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatalf("profile: %v", err)
	}
	go srv.Serve(ln)

	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGINT, syscall.SIGTERM)
	var w *window
	for s := range sig {
		switch s {
		case syscall.SIGUSR1:
			if w == nil {
				w = startWindow(*out, *mutexFrac, *blockRate)
			}
		case syscall.SIGUSR2:
			if w != nil {
				w.stop()
				w = nil
			}
		default:
			if w != nil {
				w.stop()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			srv.Shutdown(ctx)
			cancel()
			return
		}
	}
}

// window is a profiling window in progress.
type window struct {
	dir   string
	cpu   *os.File
	start time.Time
	ms    runtime.MemStats
	ru    syscall.Rusage
	io    map[string]uint64
}

// procIO reads /proc/self/io: syscr and syscw count the read- and
// write-class syscalls (read, readv, pread64 / write, writev, pwrite64) of
// every thread the process ever had, which perf attached to a running
// process would not.
func procIO() map[string]uint64 {
	m := map[string]uint64{}
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			m[k] = n
		}
	}
	return m
}

func startWindow(dir string, mutexFrac, blockRate int) *window {
	w := &window{dir: dir}
	writeProfile(filepath.Join(dir, "allocs-start.pprof"), "allocs")
	runtime.SetMutexProfileFraction(mutexFrac)
	runtime.SetBlockProfileRate(blockRate)
	f, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		log.Fatalf("profile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Fatalf("profile: %v", err)
	}
	w.cpu = f
	runtime.ReadMemStats(&w.ms)
	syscall.Getrusage(syscall.RUSAGE_SELF, &w.ru)
	w.io = procIO()
	w.start = time.Now()
	log.Print("profile: window started")
	return w
}

func (w *window) stop() {
	elapsed := time.Since(w.start)
	var ms runtime.MemStats
	var ru syscall.Rusage
	runtime.ReadMemStats(&ms)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	io := procIO()
	pprof.StopCPUProfile()
	w.cpu.Close()
	writeProfile(filepath.Join(w.dir, "mutex.pprof"), "mutex")
	writeProfile(filepath.Join(w.dir, "block.pprof"), "block")
	runtime.SetMutexProfileFraction(0)
	runtime.SetBlockProfileRate(0)
	writeProfile(filepath.Join(w.dir, "allocs-end.pprof"), "allocs")

	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	stats := map[string]any{
		"seconds":          elapsed.Seconds(),
		"mallocs":          ms.Mallocs - w.ms.Mallocs,
		"alloc_bytes":      ms.TotalAlloc - w.ms.TotalAlloc,
		"gc_cycles":        ms.NumGC - w.ms.NumGC,
		"gc_pause_seconds": float64(ms.PauseTotalNs-w.ms.PauseTotalNs) / 1e9,
		"user_seconds":     tv(ru.Utime) - tv(w.ru.Utime),
		"system_seconds":   tv(ru.Stime) - tv(w.ru.Stime),
		"vol_ctx_switches": ru.Nvcsw - w.ru.Nvcsw,
		"inv_ctx_switches": ru.Nivcsw - w.ru.Nivcsw,
		"read_syscalls":    io["syscr"] - w.io["syscr"],
		"write_syscalls":   io["syscw"] - w.io["syscw"],
		"heap_inuse_bytes": ms.HeapInuse,
		"sys_bytes":        ms.Sys,
		"goroutines":       runtime.NumGoroutine(),
	}
	b, _ := json.MarshalIndent(stats, "", "  ")
	if err := os.WriteFile(filepath.Join(w.dir, "window.json"), append(b, '\n'), 0o644); err != nil {
		log.Fatalf("profile: %v", err)
	}
	log.Print("profile: window written")
}

func writeProfile(path, name string) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatalf("profile: %v", err)
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		log.Fatalf("profile: %v", err)
	}
}
