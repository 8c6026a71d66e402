package metrics

// Checks of what deploy/ holds: the Prometheus configuration and alert
// rules (promtool), the Grafana dashboard, the systemd unit
// (systemd-analyze) and the example configuration (configs.Parse), and
// that every metric they name is one stackd exports.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/configs"

	"github.com/stackd/stackd/internal/stackdtest"
)

const deployDir = "../deploy"

// tool returns the path of an external command the test needs (see
// stackdtest.Missing for when it is not installed).
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		stackdtest.Missing(t, "%s not found: install Debian's %s", name, pkg)
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPrometheusConfig(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	// check config also loads and checks the rule files it names.
	run(t, filepath.Join(deployDir, "prometheus"), promtool, "check", "config", "prometheus.yml")
}

// alertRules is the part of a Prometheus rule file the tests read.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadAlerts(t *testing.T) alertRules {
	t.Helper()
	var r alertRules
	if err := yaml.Unmarshal(readFile(t, filepath.Join(deployDir, "prometheus", "alerts.yml")), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestAlertRules checks the rules with promtool, then runs the unit tests
// of testdata/alerts_test.yml against them: each alert fires on the
// series meant to fire it and not on the others.
func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	run(t, filepath.Join(deployDir, "prometheus"), promtool, "check", "rules", "alerts.yml")

	// promtool compares annotations verbatim; test the logic on a copy
	// without them.
	var doc yaml.Node
	if err := yaml.Unmarshal(readFile(t, filepath.Join(deployDir, "prometheus", "alerts.yml")), &doc); err != nil {
		t.Fatal(err)
	}
	dropKey(&doc, "annotations")
	stripped, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), stripped, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yml"), readFile(t, filepath.Join("testdata", "alerts_test.yml")), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, promtool, "test", "rules", "alerts_test.yml")

	// Every alert has a test.
	tests := string(readFile(t, filepath.Join("testdata", "alerts_test.yml")))
	for _, g := range loadAlerts(t).Groups {
		for _, r := range g.Rules {
			if !strings.Contains(tests, "alertname: "+r.Alert+"\n") {
				t.Errorf("alert %s has no test in testdata/alerts_test.yml", r.Alert)
			}
		}
	}
}

// dropKey deletes key from every mapping in the YAML tree n.
func dropKey(n *yaml.Node, key string) {
	if n.Kind == yaml.MappingNode {
		var kept []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != key {
				kept = append(kept, n.Content[i], n.Content[i+1])
			}
		}
		n.Content = kept
	}
	for _, c := range n.Content {
		dropKey(c, key)
	}
}

// TestAlertsTellWhatToDo: every alert has a severity, a summary and a
// description long enough to say what to do.
func TestAlertsTellWhatToDo(t *testing.T) {
	rules := loadAlerts(t)
	var names []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			names = append(names, r.Alert)
			if r.Labels["severity"] != "critical" && r.Labels["severity"] != "warning" {
				t.Errorf("%s: severity %q", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 200 {
				t.Errorf("%s: summary %q, description of %d bytes: say what the operator should do",
					r.Alert, r.Annotations["summary"], len(r.Annotations["description"]))
			}
		}
	}
	// What the issue asks for, at least.
	for _, want := range []string{"StackdDown", "StackdRequestErrors", "StackdHighLatency", "StackdPoolExhausted", "StackdPayloadBudgetFull"} {
		if !slices.Contains(names, want) {
			t.Errorf("no alert %s", want)
		}
	}
	// The README tells what each asks the operator to do.
	readme := string(readFile(t, "../README.md"))
	for _, n := range names {
		if !strings.Contains(readme, n) {
			t.Errorf("README does not mention alert %s", n)
		}
	}
}

// dashboardExprs returns every PromQL expression of the Grafana dashboard:
// panel targets and template variable queries.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	var dash any
	if err := json.Unmarshal(readFile(t, filepath.Join(deployDir, "grafana", "stackd.json")), &dash); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	var walk func(key string, v any)
	walk = func(key string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				walk(k, c)
			}
		case []any:
			for _, c := range v {
				walk(key, c)
			}
		case string:
			if key == "expr" || key == "definition" {
				exprs = append(exprs, v)
			}
		}
	}
	walk("", dash)
	if len(exprs) < 10 {
		t.Fatalf("%d expressions in the dashboard", len(exprs))
	}
	return exprs
}

// TestDashboard checks that the dashboard's panels cover what an operator
// looks at, and that every expression parses as PromQL once Grafana's
// variables are filled in.
func TestDashboard(t *testing.T) {
	exprs := dashboardExprs(t)
	all := strings.Join(exprs, "\n")
	for _, want := range []string{
		"rate(stackd_export_requests_total",                    // IOPS
		"rate(stackd_export_bytes_total",                       // bandwidth
		"histogram_quantile(0.99",                              // latency quantiles
		"stackd_export_requests_in_flight",                     // in flight
		"stackd_layer_pool_in_use_bios",                        // pool occupancy
		"rate(stackd_layer_pool_rescued_bios_total",            // rescues per layer
		"stackd_payload_budget_in_use_bytes",                   // payload budget
		"label_values(stackd_export_requests_total",            // the export variable
		"stackd_export_request_duration_seconds_bucket{",       // quantiles from buckets
		"rate(stackd_layer_pool_allocation_wait_seconds_total", // pool waits
	} {
		if !strings.Contains(all, want) {
			t.Errorf("the dashboard has no expression with %q", want)
		}
	}

	promtool := tool(t, "promtool", "prometheus")
	// As recording rules, promtool parses each expression.
	vars := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "$export", ".*", "$layer", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, e := range exprs {
		if strings.HasPrefix(e, "label_values(") {
			// Grafana's, not PromQL: label_values(SELECTOR, label).
			inner := strings.TrimSuffix(strings.TrimPrefix(e, "label_values("), ")")
			i := strings.LastIndex(inner, ",")
			if i < 0 {
				t.Errorf("template query %q", e)
				continue
			}
			e = inner[:i]
		}
		n++
		q, _ := json.Marshal(vars.Replace(e))
		fmt.Fprintf(&rules, "      - record: dashboard:expr%d\n        expr: %s\n", n, q)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yml"), []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, promtool, "check", "rules", "dashboard.yml")
}

// metricRef finds the metric names an expression uses: identifiers with
// stackd's prefix, or of the Go and process collectors.
var metricRef = regexp.MustCompile(`\b(?:stackd|process|go)_[a-zA-Z0-9_]*[a-zA-Z0-9]`)

// exportedNames are the metric families a scrape returns after a workload
// that exercises every series, the histogram's _bucket/_sum/_count
// included.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	r := startRig(t, testConfig, true, Options{})
	// The certificate's gauge exists only with TLS configured.
	r.m.SetCertificateExpiry(time.Now().Add(time.Hour))
	g := runWorkload(t, r)
	// The remote leg's series exist only with an nbd leg.
	maps.Copy(g, remoteWorkload(t))
	names := make(map[string]bool)
	for name, mf := range g {
		names[name] = true
		if mf.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
		}
	}
	return names
}

func checkNames(t *testing.T, what string, exprs []string, names map[string]bool) {
	t.Helper()
	refs := 0
	for _, e := range exprs {
		for _, ref := range metricRef.FindAllString(e, -1) {
			refs++
			if !names[ref] {
				t.Errorf("%s: %s is not a metric stackd exports (in %q)", what, ref, e)
			}
		}
	}
	if refs == 0 {
		t.Errorf("%s names no metric", what)
	}
}

// TestDeployNamesExportedMetrics: every metric the dashboard and the
// alert rules use is one stackd exports.
func TestDeployNamesExportedMetrics(t *testing.T) {
	names := exportedNames(t)
	checkNames(t, "deploy/grafana/stackd.json", dashboardExprs(t), names)
	var exprs []string
	for _, g := range loadAlerts(t).Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	checkNames(t, "deploy/prometheus/alerts.yml", exprs, names)

	// And the README's table documents every stackd_ metric.
	readme := string(readFile(t, "../README.md"))
	for name := range names {
		if strings.HasPrefix(name, "stackd_") && !strings.HasSuffix(name, "_bucket") &&
			!strings.HasSuffix(name, "_sum") && !strings.HasSuffix(name, "_count") &&
			!strings.Contains(readme, "`"+name+"`") {
			t.Errorf("README does not document %s", name)
		}
	}
}

func TestSystemdUnit(t *testing.T) {
	unit := string(readFile(t, filepath.Join(deployDir, "stackd.service")))
	for _, want := range []string{
		"ExecStart=/usr/local/bin/stackd serve -config /etc/stackd/stackd.yaml",
		"DynamicUser=yes", "User=stackd", "StateDirectory=stackd", "LimitNOFILE=",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet=\n",
		"SystemCallFilter=@system-service", "WantedBy=multi-user.target",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("stackd.service lacks %q", want)
		}
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze: not verifying the unit")
	}
	// verify insists that the binary exists: point the unit at one that
	// does, in a copy.
	dir := t.TempDir()
	copyUnit := filepath.Join(dir, "stackd.service")
	if err := os.WriteFile(copyUnit, []byte(strings.ReplaceAll(unit, "/usr/local/bin/stackd", "/bin/true")), 0o644); err != nil {
		t.Fatal(err)
	}
	// verify exits 0 on unknown keys and bad values, but says so.
	if out := run(t, dir, sa, "verify", copyUnit); strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify:\n%s", out)
	}
	// The offline security audit: exposure 2.0 or less ("OK").
	cmd := exec.Command(sa, "security", "--offline=true", "--threshold=20", copyUnit)
	out, err := cmd.CombinedOutput()
	switch {
	case bytes.Contains(out, []byte("nrecognized option")) || bytes.Contains(out, []byte("nknown option")):
		t.Logf("systemd-analyze has no offline security audit; skipped")
	case err != nil:
		t.Errorf("systemd-analyze security: %v\n%s", err, out)
	default:
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Log(lines[len(lines)-1])
	}
}

// TestExampleConfig: deploy/stackd.yaml parses and builds, with its paths
// moved into a temporary directory.
func TestExampleConfig(t *testing.T) {
	dir := t.TempDir()
	text := string(readFile(t, filepath.Join(deployDir, "stackd.yaml")))
	if !strings.Contains(text, "/var/lib/stackd/") {
		t.Fatal("the example keeps no files in /var/lib/stackd, the unit's StateDirectory")
	}
	text = strings.NewReplacer("/var/lib/stackd/", dir+"/", "/run/stackd/", dir+"/").Replace(text)
	cfg, err := configs.Parse(filepath.Join(dir, "stackd.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if want := dir + "/control.sock"; cfg.Control != want {
		t.Errorf("control socket %q, want /run/stackd/control.sock, the unit's RuntimeDirectory", cfg.Control)
	}
	if cfg.MetricsAddress != "127.0.0.1:9810" {
		t.Errorf("metrics address %q, want the one deploy/prometheus scrapes", cfg.MetricsAddress)
	}
	for _, e := range cfg.Exports {
		st, err := e.Build(nil)
		if err != nil {
			t.Fatalf("export %s: %v", e.Name, err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("export %s: close: %v", e.Name, err)
		}
	}
	prom := string(readFile(t, filepath.Join(deployDir, "prometheus", "prometheus.yml")))
	if !strings.Contains(prom, `"`+cfg.MetricsAddress+`"`) {
		t.Errorf("prometheus.yml does not scrape %s", cfg.MetricsAddress)
	}
}
