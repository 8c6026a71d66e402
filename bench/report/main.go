// Command report turns the raw output of bench/run.sh into the benchmark
// table: results.md (Markdown), chart.svg (IOPS per server and workload)
// and results.json (every run, summarised, plus the medians).
//
//	report [-workloads bench/workloads.tsv] -raw bench/results/raw -out bench/results
//	report [-workloads bench/workloads.tsv] -from bench/results/results.json -out DIR
//
// The rows, their labels and the goals come from bench/workloads.tsv, the
// file run.sh and ab.sh take the fio options from. The raw output is not
// committed, so -from renders again from a results.json that report wrote:
// its runs, census, memory and profile summaries are all the tables and
// the chart need.
//
// Each cell of the table is the median over the repetitions of one
// (workload, server) pair: IOPS for 4 KiB workloads, MB/s (10^6 bytes per
// second) for 1 MiB ones, followed by the server's ratio to its nbdkit
// baseline: nbdkit memory for the memory servers, nbdkit file for the
// file-backed ones.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io/fs"
	"log"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// workload describes a row of the table: a line of bench/workloads.tsv.
type workload struct {
	Name  string
	Label string
	MBps  bool // report MB/s instead of IOPS
}

// workloads are the rows, in the table's order; main loads them.
var workloads []workload

// loadWorkloads reads bench/workloads.tsv: comment lines, a header, then
// one workload a line, "-" for an empty field.
func loadWorkloads(path string) ([]workload, error) {
	out, err := loadTSV(path, func(r map[string]string) (workload, error) {
		for k, v := range r {
			if v == "-" {
				r[k] = ""
			}
		}
		w := workload{Name: r["name"], Label: r["label"], MBps: r["unit"] == "mbps"}
		if w.Name == "" || w.Label == "" || (r["unit"] != "iops" && r["unit"] != "mbps") {
			return w, fmt.Errorf("workload %q needs a name, a label and a unit (iops or mbps)", w.Name)
		}
		return w, nil
	})
	if err == nil && len(out) == 0 {
		err = fmt.Errorf("%s: no workloads", path)
	}
	return out, err
}

// goal is a line of bench/goals.tsv: a ratio between two columns of one
// row that a run meets or falls short of.
type goal struct {
	Workload, Server, Versus string
	// CPU: the ratio is of CPU per request, and must be below Ratio;
	// otherwise of throughput, and must be at least Ratio.
	CPU   bool
	Ratio float64
	Why   string
}

// goals are the goals, in the file's order; main loads them.
var goals []goal

// loadGoals reads bench/goals.tsv, checking each line's workload and
// servers against the table's.
func loadGoals(path string) ([]goal, error) {
	return loadTSV(path, func(r map[string]string) (goal, error) {
		g := goal{Workload: r["workload"], Server: r["server"], Versus: r["versus"], CPU: r["measure"] == "cpu", Why: r["why"]}
		switch {
		case !knownWorkload(g.Workload):
			return g, fmt.Errorf("goal for unknown workload %q", g.Workload)
		case !knownServer(g.Server) || !knownServer(g.Versus):
			return g, fmt.Errorf("goal %s: unknown server %q or %q", g.Workload, g.Server, g.Versus)
		case r["measure"] != "cpu" && r["measure"] != "throughput":
			return g, fmt.Errorf("goal %s: measure %q is not throughput or cpu", g.Workload, r["measure"])
		}
		var err error
		if g.Ratio, err = strconv.ParseFloat(r["goal"], 64); err != nil || g.Ratio <= 0 {
			return g, fmt.Errorf("goal %s: %q is not a ratio", g.Workload, r["goal"])
		}
		return g, nil
	})
}

// loadTSV reads path with readTSV and makes each row a T with parse; a
// row that parse refuses fails the file, named in the error.
func loadTSV[T any](path string, parse func(map[string]string) (T, error)) ([]T, error) {
	rows, err := readTSV(path)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(rows))
	for _, r := range rows {
		v, err := parse(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// server describes a column.
type server struct {
	Name     string
	Label    string
	Baseline string // the column its ratio is taken against
	Color    color.RGBA
}

var servers = []server{
	{"stackd-default", "stackd default stack", "nbdkit-memory", rgb(0x1f77b4)},
	{"stackd-default-p1", "stackd default stack, GOMAXPROCS=1", "nbdkit-memory", rgb(0x08519c)},
	{"stackd-memory", "stackd memory", "nbdkit-memory", rgb(0x6baed6)},
	{"stackd-file", "stackd file (tmpfs)", "nbdkit-file", rgb(0x9ecae1)},
	{"nbdkit-memory", "nbdkit memory", "nbdkit-memory", rgb(0xd62728)},
	{"nbdkit-file", "nbdkit file (tmpfs)", "nbdkit-file", rgb(0xff9896)},
	{"qemu-nbd", "qemu-nbd (tmpfs)", "nbdkit-file", rgb(0x2ca02c)},
	{"go-nbd", "go-nbd memory", "nbdkit-memory", rgb(0x9467bd)},
	{"stackd-null", "stackd null", "nbdkit-null", rgb(0x17becf)},
	{"nbdkit-null", "nbdkit null", "nbdkit-null", rgb(0xbcbd22)},
}

// Run is one fio run of the table.
type Run struct {
	Rep      int    `json:"rep"`
	Workload string `json:"workload"`
	Server   string `json:"server"`
	Instance string `json:"instance"`
	// Status is ok, fail, or disturbed (other processes were busy during
	// the run, and run.sh ran it again); only ok runs count.
	Status    string  `json:"status"`
	OK        bool    `json:"ok"`
	IOPS      float64 `json:"iops"`
	MBps      float64 `json:"mbps"`
	IOs       int64   `json:"ios"`
	LatMeanUs float64 `json:"lat_mean_us"`
	LatP50Us  float64 `json:"lat_p50_us"`
	LatP99Us  float64 `json:"lat_p99_us"`
	// ServerCPUUs is the server process's CPU time per request, over the
	// measured part of the run.
	ServerCPUUs float64 `json:"server_cpu_us_per_io"`
	// OtherLoad estimates the share of the machine's CPUs busy with
	// neither fio nor the server during the run.
	OtherLoad float64 `json:"other_load"`
	// QuietWait is how long run.sh waited for other load to settle
	// before the run, in seconds.
	QuietWait int `json:"quiet_wait_s"`
}

// Cell is the summary of one (workload, server) pair.
type Cell struct {
	Workload string  `json:"workload"`
	Server   string  `json:"server"`
	N        int     `json:"runs"`
	Median   float64 `json:"median"` // IOPS or MB/s
	Min      float64 `json:"min"`
	Max      float64 `json:"max"`
	Ratio    float64 `json:"ratio_to_baseline,omitempty"`
	CPUUs    float64 `json:"server_cpu_us_per_io"`
	P99Us    float64 `json:"lat_p99_us"`
}

type fioResult struct {
	Jobs []struct {
		JobRuntime int64  `json:"job_runtime"`
		Read       fioDir `json:"read"`
		Write      fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	IOPS     float64 `json:"iops"`
	BWBytes  float64 `json:"bw_bytes"`
	TotalIOs int64   `json:"total_ios"`
	ClatNs   struct {
		Mean       float64            `json:"mean"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

type fioSummary struct {
	IOPS, MBps, Mean, P50, P99 float64
	IOs                        int64
	RuntimeMs                  int64
}

func readFio(path string) (fioSummary, error) {
	var s fioSummary
	data, err := os.ReadFile(path)
	if err != nil {
		return s, err
	}
	// fio may print notices before the JSON document.
	if i := strings.IndexByte(string(data), '{'); i > 0 {
		data = data[i:]
	}
	var r fioResult
	if err := json.Unmarshal(data, &r); err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	if len(r.Jobs) == 0 {
		return s, fmt.Errorf("%s: no jobs", path)
	}
	j := r.Jobs[0]
	main := j.Read
	if j.Write.TotalIOs > j.Read.TotalIOs {
		main = j.Write
	}
	s.IOPS = j.Read.IOPS + j.Write.IOPS
	s.MBps = (j.Read.BWBytes + j.Write.BWBytes) / 1e6
	s.IOs = j.Read.TotalIOs + j.Write.TotalIOs
	s.RuntimeMs = j.JobRuntime
	s.Mean = main.ClatNs.Mean / 1e3
	s.P50 = main.ClatNs.Percentile["50.000000"] / 1e3
	s.P99 = main.ClatNs.Percentile["99.000000"] / 1e3
	return s, nil
}

// readKV reads KEY=VALUE lines.
func readKV(path string) map[string]string {
	m := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// readTSV reads a tab-separated file with a header line into maps; it
// skips blank lines and lines that start with #.
func readTSV(path string) ([]map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return nil, nil
	}
	head := strings.Split(lines[0], "\t")
	var rows []map[string]string
	for _, l := range lines[1:] {
		f := strings.Split(l, "\t")
		row := map[string]string{}
		for i, h := range head {
			if i < len(f) {
				row[h] = f[i]
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func atof(s string) float64 { f, _ := strconv.ParseFloat(s, 64); return f }
func atoi(s string) int     { n, _ := strconv.Atoi(s); return n }

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func main() {
	wlFile := flag.String("workloads", "bench/workloads.tsv", "the workloads: the table's rows and their labels")
	goalFile := flag.String("goals", "bench/goals.tsv", "the goals the run is judged by")
	raw := flag.String("raw", "bench/results/raw", "directory of run.sh's raw output")
	from := flag.String("from", "", "a results.json that report wrote, to render again instead of the raw output")
	out := flag.String("out", "bench/results", "directory to write results.md, chart.svg and results.json to")
	flag.Parse()

	var err error
	if workloads, err = loadWorkloads(*wlFile); err != nil {
		log.Fatalf("report: %v", err)
	}
	if goals, err = loadGoals(*goalFile); err != nil {
		log.Fatalf("report: %v", err)
	}
	var res results
	if *from != "" {
		res, err = loadResults(*from)
	} else {
		res, err = loadRaw(*raw, filepath.Join(*out, "profile"))
	}
	if err != nil {
		log.Fatalf("report: %v", err)
	}
	// The cells are always computed again, from the runs: -from reads
	// them back only as part of the document.
	res.Cells = summarise(res.Runs)

	var md strings.Builder
	writeMarkdown(&md, res)
	if err := os.WriteFile(filepath.Join(*out, "results.md"), []byte(md.String()), 0o644); err != nil {
		log.Fatalf("report: %v", err)
	}
	if err := writeChart(filepath.Join(*out, "chart.svg"), res); err != nil {
		log.Fatalf("report: chart: %v", err)
	}
	b, err := json.MarshalIndent(res, "", " ")
	if err != nil {
		log.Fatalf("report: results.json: %v", err)
	}
	if err := os.WriteFile(filepath.Join(*out, "results.json"), append(b, '\n'), 0o644); err != nil {
		log.Fatalf("report: %v", err)
	}
}

// writeChart draws the chart to path. With no run that succeeded there is
// nothing to draw: the tables say so, results.json keeps the failed runs,
// and an older chart is removed rather than left to pass for this one.
func writeChart(path string, res results) error {
	if len(res.Cells) == 0 {
		log.Print("report: no run succeeded, so no chart")
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	svg, err := chart(res.Cells, res.Meta)
	if err != nil {
		return err
	}
	return os.WriteFile(path, svg, 0o644)
}

// results is what results.json holds, and all that the tables and the
// chart are made of. The fields are in the order of their names, the
// order results.json has always had.
type results struct {
	Cells   []Cell            `json:"cells"`
	Census  []CensusRow       `json:"census"`
	Memory  map[string]any    `json:"memory"`
	Meta    map[string]string `json:"meta"`
	Profile []Profile         `json:"profile"`
	Runs    []Run             `json:"runs"`
}

// loadRaw reads run.sh's raw output, and the profiles from their directory.
func loadRaw(raw, profiles string) (results, error) {
	meta := readKV(filepath.Join(raw, "meta.txt"))
	runs, err := loadRuns(raw, meta)
	if err != nil {
		return results{}, err
	}
	return results{Meta: meta, Runs: runs, Census: loadCensus(raw), Memory: loadMemory(raw), Profile: loadProfiles(profiles)}, nil
}

// loadResults reads a results.json that report wrote.
func loadResults(path string) (results, error) {
	var res results
	data, err := os.ReadFile(path)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return res, fmt.Errorf("%s: %w", path, err)
	}
	if len(res.Runs) == 0 {
		return res, fmt.Errorf("%s: no runs", path)
	}
	return res, nil
}

func loadRuns(raw string, meta map[string]string) ([]Run, error) {
	rows, err := readTSV(filepath.Join(raw, "runs.tsv"))
	if err != nil {
		return nil, err
	}
	cpus := atof(meta["cpus"])
	measured := atof(meta["runtime"])
	ramp := atof(meta["ramp"])
	var runs []Run
	for _, r := range rows {
		run := Run{Rep: atoi(r["rep"]), Workload: r["workload"], Server: r["server"], Instance: r["instance"], Status: r["status"], OK: r["status"] == "ok", QuietWait: atoi(r["quiet_wait_s"])}
		if run.Status != "fail" {
			s, err := readFio(filepath.Join(raw, r["file"]))
			if err != nil {
				log.Printf("report: %v", err)
				run.OK, run.Status = false, "fail"
			} else {
				run.IOPS, run.MBps, run.IOs = s.IOPS, s.MBps, s.IOs
				run.LatMeanUs, run.LatP50Us, run.LatP99Us = s.Mean, s.P50, s.P99
				clk := atof(r["clk_tck"])
				if s.IOs > 0 && clk > 0 {
					run.ServerCPUUs = atof(r["server_cpu_ticks"]) / clk * 1e6 / float64(s.IOs)
				}
				if cpus > 0 && clk > 0 && measured > 0 {
					// fio's own CPU time covers its ramp and start too;
					// count only the measured share of it.
					fio := atof(r["fio_cpu_ms"]) / 1e3 * measured / (measured + ramp)
					busy := atof(r["busy_ticks"]) / clk
					srv := atof(r["server_cpu_ticks"]) / clk
					run.OtherLoad = math.Max(0, (busy-srv-fio)/(cpus*measured))
				}
			}
		}
		runs = append(runs, run)
	}
	return runs, nil
}

func wlByName(name string) workload {
	for _, w := range workloads {
		if w.Name == name {
			return w
		}
	}
	return workload{Name: name, Label: name}
}

func value(r Run) float64 {
	if wlByName(r.Workload).MBps {
		return r.MBps
	}
	return r.IOPS
}

func summarise(runs []Run) []Cell {
	var cells []Cell
	for _, w := range workloads {
		for _, s := range servers {
			var v, cpu, p99 []float64
			for _, r := range runs {
				if r.Workload == w.Name && r.Server == s.Name && r.OK {
					v = append(v, value(r))
					cpu = append(cpu, r.ServerCPUUs)
					p99 = append(p99, r.LatP99Us)
				}
			}
			if len(v) == 0 {
				continue
			}
			cells = append(cells, Cell{
				Workload: w.Name, Server: s.Name, N: len(v),
				Median: median(v), Min: slices.Min(v), Max: slices.Max(v),
				CPUUs: median(cpu), P99Us: median(p99),
			})
		}
	}
	for i := range cells {
		c := &cells[i]
		base := find(cells, c.Workload, serverByName(c.Server).Baseline)
		if base != nil && base.Median > 0 {
			c.Ratio = c.Median / base.Median
		}
	}
	return cells
}

func find(cells []Cell, wl, srv string) *Cell {
	for i := range cells {
		if cells[i].Workload == wl && cells[i].Server == srv {
			return &cells[i]
		}
	}
	return nil
}

func knownServer(name string) bool {
	return slices.ContainsFunc(servers, func(s server) bool { return s.Name == name })
}

func knownWorkload(name string) bool {
	return slices.ContainsFunc(workloads, func(w workload) bool { return w.Name == name })
}

func serverByName(name string) server {
	for _, s := range servers {
		if s.Name == name {
			return s
		}
	}
	return server{Name: name, Label: name}
}

// fmtValue prints IOPS as 152.3k and MB/s as a whole number.
func fmtValue(w workload, v float64) string {
	if w.MBps {
		return fmt.Sprintf("%.0f MB/s", v)
	}
	if v >= 1000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

// present returns the items of all (columns or rows) that name at least
// one cell, in all's order.
func present[T any](all []T, name func(T) string, cells []Cell, cellName func(Cell) string) []T {
	var out []T
	for _, x := range all {
		for _, c := range cells {
			if cellName(c) == name(x) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

// activeServers returns the columns that have at least one cell.
func activeServers(cells []Cell) []server {
	return present(servers, func(s server) string { return s.Name }, cells, func(c Cell) string { return c.Server })
}

// activeWorkloads returns the rows that have at least one cell.
func activeWorkloads(cells []Cell) []workload {
	return present(workloads, func(w workload) string { return w.Name }, cells, func(c Cell) string { return c.Workload })
}

func writeMarkdown(md *strings.Builder, res results) {
	meta, runs, cells, census, mem, prof := res.Meta, res.Runs, res.Cells, res.Census, res.Memory, res.Profile
	p := func(format string, a ...any) { fmt.Fprintf(md, format, a...) }
	cols := activeServers(cells)
	rows := activeWorkloads(cells)

	p("# stackd benchmark results\n\n")
	p("Measured %s on %s CPUs (%s), kernel %s, %s, %s, %s, %s; stackd at %s",
		meta["date"], meta["cpus"], meta["cpu_model"], meta["kernel"], meta["fio"], meta["nbdkit"], meta["qemu_nbd"], meta["go"], meta["revision"])
	if n := atoi(meta["dirty_files"]); n > 0 {
		p(" plus %d uncommitted changed files in its packages", n)
	}
	p(".\nEach cell is the median of %s runs of %s s (after a %s s ramp) with fio `--ioengine=nbd` over a unix socket; every export is %s MiB, filled before the runs. Reproduce with `bench/run.sh` (see bench/README.md).\n\n",
		meta["reps"], meta["runtime"], meta["ramp"], meta["size_mib"])

	p("## Throughput\n\n")
	p("IOPS for 4 KiB workloads, MB/s for 1 MiB. In parentheses: the ratio to nbdkit memory (memory servers), to nbdkit file (file servers, marked ᶠ) or to nbdkit null (stackd null). n/a: the workload does not apply.\n\n")
	p("| workload |")
	for _, s := range cols {
		mark := ""
		if s.Baseline == "nbdkit-file" {
			mark = " ᶠ"
		}
		p(" %s%s |", s.Label, mark)
	}
	p("\n|---|")
	for range cols {
		p("---:|")
	}
	p("\n")
	for _, w := range rows {
		p("| %s |", w.Label)
		for _, s := range cols {
			c := find(cells, w.Name, s.Name)
			switch {
			case c == nil:
				p(" n/a |")
			case c.Ratio > 0 && s.Name != s.Baseline:
				p(" %s (%.2f×) |", fmtValue(w, c.Median), c.Ratio)
			default:
				p(" %s |", fmtValue(w, c.Median))
			}
		}
		p("\n")
	}
	p("\nThe 1 ms row runs against delayed twins: stackd's default stack with `delay: 1ms` on each memory leaf, nbdkit memory under `--filter=delay delay-read=1ms delay-write=1ms`, and the go-nbd server with a 1 ms sleep in its backend.\n\n")
	p("![IOPS per server and workload](chart.svg)\n\n")

	p("## Goals\n\n")
	p("From bench/goals.tsv. Throughput goals are a ratio of medians, at least the goal; CPU goals a ratio of median server CPU per request, below it.\n\n")
	p("| workload | server | versus | measure | goal | measured | | what for |\n|---|---|---|---|---:|---:|---|---|\n")
	for _, g := range goals {
		a, b := find(cells, g.Workload, g.Server), find(cells, g.Workload, g.Versus)
		if a == nil || b == nil {
			continue // a server or workload left out of this run
		}
		measure, want, r, met := "throughput", fmt.Sprintf("≥ %.2f×", g.Ratio), 0.0, false
		if g.CPU {
			measure, want = "CPU per request", fmt.Sprintf("< %.2f×", g.Ratio)
			if b.CPUUs > 0 {
				r = a.CPUUs / b.CPUUs
				met = r < g.Ratio
			}
		} else if b.Median > 0 {
			r = a.Median / b.Median
			met = r >= g.Ratio
		}
		verdict := "met"
		if !met {
			verdict = "**short**"
		}
		p("| %s | %s | %s | %s | %s | %.2f× | %s | %s |\n", wlByName(g.Workload).Label, serverByName(g.Server).Label,
			serverByName(g.Versus).Label, measure, want, r, verdict, g.Why)
	}
	p("\n")

	p("## Server CPU per request\n\n")
	p("CPU time (user + system) the server process spent per request during the measured part of each run, in µs, median over the repetitions: lower is cheaper. fio runs on the same %s CPUs, so a server that costs more CPU also slows the client.\n\n", meta["cpus"])
	table(md, rows, cols, cells, func(w workload, c *Cell) string {
		if w.MBps {
			return fmt.Sprintf("%.0f", c.CPUUs)
		}
		return fmt.Sprintf("%.1f", c.CPUUs)
	})
	p("\n")

	p("## Completion latency p99 (µs)\n\n")
	table(md, rows, cols, cells, func(w workload, c *Cell) string { return fmt.Sprintf("%.0f", c.P99Us) })
	p("\n")

	p("## Run-to-run spread\n\n")
	p("(max − min) / median over the repetitions, in percent.\n\n")
	table(md, rows, cols, cells, func(w workload, c *Cell) string {
		if c.Median == 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f%%", (c.Max-c.Min)/c.Median*100)
	})
	var loads []float64
	failed, disturbed, waited := 0, 0, 0
	for _, r := range runs {
		waited += r.QuietWait
		switch r.Status {
		case "ok":
			loads = append(loads, r.OtherLoad)
		case "disturbed":
			disturbed++
		default:
			failed++
		}
	}
	if len(loads) > 0 {
		p("\nOther load on the machine during the runs (CPU time used by neither fio nor the server, as a share of all CPUs; estimated): median %.0f%%, max %.0f%%. Load average at start %s, at end %s.",
			median(loads)*100, slices.Max(loads)*100, meta["loadavg_start"], meta["loadavg_end"])
		p(" run.sh waited %d s in all, before runs, for other load to drop below 15%%.", waited)
	}
	if disturbed > 0 {
		p(" %d runs were disturbed by other load (over 15%% of the CPUs) and run again; only the repeats count.", disturbed)
	}
	if failed > 0 {
		p(" %d runs failed and are left out.", failed)
	}
	p("\n\n")

	if len(census) > 0 {
		p("## Syscalls per request\n\n")
		p("Counted with `perf stat` in separate runs (tracing costs a little, so these runs are not the table's): each server runs under perf from start to exit, so every thread counts, filling its export, then serving one fio run without ramp; the divisor is the requests of that run (the fill adds under 1%% to the syscalls). socket rd/wr: read, readv, recvfrom, recvmsg / write, writev, sendto, sendmsg; file: pread64, pwrite64, preadv(2), pwritev(2), lseek; wait: epoll_wait, epoll_pwait, poll, ppoll; futex; all: every syscall. ctxsw: context switches per request. IOPS: fio's, under tracing.\n\n")
		p("| workload | server | IOPS | all | socket rd | socket wr | file | futex | wait | other | ctxsw |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range census {
			p("| %s | %s | %s |%s\n", wlByName(c.Workload).Label, serverByName(c.Server).Label, fmtValue(wlByName(c.Workload), c.IOPS),
				perIOCells(c.PerIO, "all", "sock_read", "sock_write", "file", "futex", "wait", "other", "ctxsw"))
		}
		p("\n")
	}

	if mem != nil {
		p("## Memory under a write storm\n\n")
		p("stackd, default stack, payload budget %v: %v connections each keeping %v × 1 MiB writes in flight (fio numjobs=%v iodepth=%v bs=1M randwrite) for %v s, after the export was filled (so the RSS before the storm already holds the %s MiB of data).\n\n",
			mem["payload_budget"], mem["connections"], mem["iodepth"], mem["connections"], mem["iodepth"], mem["runtime"], meta["size_mib"])
		p("| RSS before | peak RSS (VmHWM) | peak − before | payload budget | write throughput |\n|---:|---:|---:|---:|---:|\n")
		p("| %.0f MiB | %.0f MiB | %.0f MiB | %v | %.0f MB/s |\n\n", mem["rss_before_mib"], mem["hwm_after_mib"], mem["growth_mib"], mem["payload_budget"], mem["mbps"])
	}

	if len(prof) > 0 {
		p("## Profile of stackd (default stack, in process)\n\n")
		p("bench/profile serves the embedded default configuration (no metrics) and profiles one fio run; full listings in profile/*.top.txt, CPU profiles in profile/*.cpu.pprof (open with `go tool pprof`). Socket reads and writes are read/write syscalls from /proc/self/io, context switches from getrusage (both exact); syscalls and futex from perf attached for the run (a lower bound). IOPS are under profiling and tracing, lower than the table's.\n\n")
		p("| workload | IOPS | CPU µs/req | syscalls/req | socket rd/req | socket wr/req | futex/req | ctxsw/req | allocs/req | bytes alloc/req | GC cycles |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, pr := range prof {
			p("| %s | %s | %.1f |%s %.2f | %.0f | %d |\n", wlByName(pr.Workload).Label, fmtValue(wlByName(pr.Workload), pr.IOPS), pr.CPUUs,
				perIOCells(pr.PerIO, "all", "sock_read", "sock_write", "futex", "ctxsw"), pr.AllocsPerIO, pr.BytesPerIO, pr.GCCycles)
		}
		p("\n")
	}
}

// perIOCells prints the per-request counts of keys as table cells.
func perIOCells(perIO map[string]float64, keys ...string) string {
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %.2f |", perIO[k])
	}
	return b.String()
}

func table(md *strings.Builder, rows []workload, cols []server, cells []Cell, f func(workload, *Cell) string) {
	fmt.Fprintf(md, "| workload |")
	for _, s := range cols {
		fmt.Fprintf(md, " %s |", s.Label)
	}
	fmt.Fprintf(md, "\n|---|")
	for range cols {
		fmt.Fprintf(md, "---:|")
	}
	fmt.Fprintf(md, "\n")
	for _, w := range rows {
		fmt.Fprintf(md, "| %s |", w.Label)
		for _, s := range cols {
			if c := find(cells, w.Name, s.Name); c != nil {
				fmt.Fprintf(md, " %s |", f(w, c))
			} else {
				fmt.Fprintf(md, " n/a |")
			}
		}
		fmt.Fprintf(md, "\n")
	}
}

// CensusRow is one server's syscall counts under one workload, per request.
type CensusRow struct {
	Workload string             `json:"workload"`
	Server   string             `json:"server"`
	IOPS     float64            `json:"iops"`
	PerIO    map[string]float64 `json:"per_io"`
}

// perfCounts reads `perf stat -x,` output: event name to count (task-clock
// in ms).
func perfCounts(path string) map[string]float64 {
	m := map[string]float64{}
	data, err := os.ReadFile(path)
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(data), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		f := strings.Split(l, ",")
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[f[2]] = v
	}
	return m
}

// perIO groups perf counts by kind and divides by the requests served.
func perIO(c map[string]float64, ios float64) map[string]float64 {
	sc := func(names ...string) float64 {
		var t float64
		for _, n := range names {
			t += c["syscalls:sys_enter_"+n]
		}
		return t
	}
	out := map[string]float64{
		"all":        c["raw_syscalls:sys_enter"],
		"sock_read":  sc("read", "readv", "recvfrom", "recvmsg"),
		"sock_write": sc("write", "writev", "sendto", "sendmsg"),
		"file":       sc("pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "lseek"),
		"futex":      sc("futex"),
		"wait":       sc("epoll_wait", "epoll_pwait", "poll", "ppoll"),
		"ctxsw":      c["context-switches"],
		"cpu_us":     c["task-clock"] * 1e3,
	}
	out["other"] = math.Max(0, out["all"]-out["sock_read"]-out["sock_write"]-out["file"]-out["futex"]-out["wait"])
	for k, v := range out {
		if ios > 0 {
			out[k] = v / ios
		}
	}
	return out
}

func loadCensus(raw string) []CensusRow {
	rows, err := readTSV(filepath.Join(raw, "census.tsv"))
	if err != nil {
		return nil
	}
	var out []CensusRow
	for _, r := range rows {
		s, err := readFio(filepath.Join(raw, r["file"]))
		if err != nil {
			log.Printf("report: census: %v", err)
			continue
		}
		// perf counts while fio measures (run.sh starts perf after the
		// ramp, for the runtime), so fio's request count is the divisor.
		counts := perfCounts(filepath.Join(raw, r["perf"]))
		out = append(out, CensusRow{Workload: r["workload"], Server: r["server"], IOPS: s.IOPS,
			PerIO: perIO(counts, float64(s.IOs))})
	}
	return out
}

func loadMemory(raw string) map[string]any {
	kv := readKV(filepath.Join(raw, "memory.txt"))
	if len(kv) == 0 {
		return nil
	}
	m := map[string]any{}
	for k, v := range kv {
		m[k] = v
	}
	before := atof(kv["rss_before_kib"]) / 1024
	hwm := atof(kv["hwm_after_kib"]) / 1024
	m["rss_before_mib"] = before
	m["hwm_after_mib"] = hwm
	m["growth_mib"] = hwm - before
	if s, err := readFio(filepath.Join(raw, "memory-fio.json")); err == nil {
		m["mbps"] = s.MBps
		m["lat_p99_us"] = s.P99
	} else {
		m["mbps"] = math.NaN()
	}
	return m
}

// Profile summarises one profiled run of bench/profile.
type Profile struct {
	Workload    string             `json:"workload"`
	IOPS        float64            `json:"iops"`
	CPUUs       float64            `json:"cpu_us_per_io"`
	AllocsPerIO float64            `json:"allocs_per_io"`
	BytesPerIO  float64            `json:"alloc_bytes_per_io"`
	GCCycles    int                `json:"gc_cycles"`
	PerIO       map[string]float64 `json:"per_io"`
}

func loadProfiles(dir string) []Profile {
	var out []Profile
	for _, w := range workloads {
		s, err := readFio(filepath.Join(dir, w.Name+".fio.json"))
		if err != nil {
			continue
		}
		var win struct {
			Seconds     float64 `json:"seconds"`
			Mallocs     float64 `json:"mallocs"`
			AllocBytes  float64 `json:"alloc_bytes"`
			GCCycles    int     `json:"gc_cycles"`
			UserSeconds float64 `json:"user_seconds"`
			SysSeconds  float64 `json:"system_seconds"`
			Reads       float64 `json:"read_syscalls"`
			Writes      float64 `json:"write_syscalls"`
			VolCS       float64 `json:"vol_ctx_switches"`
			InvCS       float64 `json:"inv_ctx_switches"`
		}
		data, err := os.ReadFile(filepath.Join(dir, w.Name+".window.json"))
		if err != nil || json.Unmarshal(data, &win) != nil {
			continue
		}
		// The window (SIGUSR1 to SIGUSR2) spans fio's whole run plus a
		// little; count requests at fio's rate over the window.
		ios := float64(s.IOs)
		pr := Profile{Workload: w.Name, IOPS: s.IOPS, GCCycles: win.GCCycles}
		if ios > 0 {
			pr.CPUUs = (win.UserSeconds + win.SysSeconds) * 1e6 / ios
			pr.AllocsPerIO = win.Mallocs / ios
			pr.BytesPerIO = win.AllocBytes / ios
		}
		pr.PerIO = perIO(perfCounts(filepath.Join(dir, w.Name+".perf.csv")), ios)
		if ios > 0 {
			// Exact, from /proc/self/io and getrusage: every thread
			// counts, which perf attached mid-life may not.
			pr.PerIO["sock_read"] = win.Reads / ios
			pr.PerIO["sock_write"] = win.Writes / ios
			pr.PerIO["ctxsw"] = (win.VolCS + win.InvCS) / ios
		}
		out = append(out, pr)
	}
	return out
}
