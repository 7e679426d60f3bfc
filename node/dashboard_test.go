package node

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
)

// The Grafana dashboard and the Prometheus rules shipped in deploy/.
const (
	dashboardFile = "../deploy/grafana/qkdkms.json"
	rulesFile     = "../deploy/prometheus/qkdkms-rules.yml"
)

// TestDashboardMetricsExported: every metric name the dashboard and the
// alert rules query is exported by running nodes: two linked one-node
// sites with a connection whose pool received a block, after one ETSI call.
func TestDashboardMetricsExported(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a QKD session")
	}
	used := map[string][]string{} // metric name -> where
	for _, e := range dashboardExprs(t) {
		for _, m := range promqlMetrics(e.expr) {
			used[m] = append(used[m], e.where)
		}
	}
	for _, e := range ruleExprs(t) {
		for _, m := range promqlMetrics(e.expr) {
			used[m] = append(used[m], e.where)
		}
	}
	if len(used) < 10 {
		t.Fatalf("found only %d metric names in the dashboard and rules: %v", len(used), used)
	}

	a, b := linkedSites(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(2*time.Minute))
	defer cancel()
	registerLinked(t, ctx, a, 20)
	waitStored(t, a, b, "ghi", "jkl", 1)
	// Keys issued and fetched, so the per-connection counters have series.
	keysMatch(t, ctx, a, b, 1)

	crt, key := a.pki.operator(t, "sender_app")
	c := httpClient(a.pki.clientTLS(t, crt, key))
	// One ETSI call (an operator is no SAE of the connection: 401), so the
	// request counter and latency histogram have a series.
	resp, err := c.Get("https://" + a.leader().Addr() + "/api/v1/keys/jkl/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	exported := map[string]bool{}
	for _, s := range []*testSite{a, b} {
		crt, key := s.pki.operator(t, s.kme)
		text := scrape(t, httpClient(s.pki.clientTLS(t, crt, key)), s.leader())
		for name := range exposedNames(text) {
			exported[name] = true
		}
		// The one key issued at the master site is counted there.
		if s == a && !strings.Contains(text, `qkdkms_keys_issued_total{master="ghi",slave="jkl"} 1`+"\n") {
			t.Errorf("%s: the issued-keys counter of ghi→jkl is not 1 after one key was issued", s.kme)
		}
	}
	var missing []string
	for name, where := range used {
		if !exported[name] {
			missing = append(missing, name+" (used in "+strings.Join(where, "; ")+")")
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("metrics used but not exported by a running node:\n  %s", strings.Join(missing, "\n  "))
	}
	t.Logf("%d metric names used by the dashboard and rules, all exported", len(used))
}

type usedExpr struct{ where, expr string }

func dashboardExprs(t *testing.T) []usedExpr {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []usedExpr
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, usedExpr{"panel " + p.Title, tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	// Grafana's label_values(METRIC, LABEL) in template variables.
	lv := regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	for _, v := range d.Templating.List {
		if m := lv.FindStringSubmatch(v.Definition); m != nil {
			out = append(out, usedExpr{"variable " + v.Name, m[1]})
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no query found", dashboardFile)
	}
	return out
}

// ruleExprs reads the rules file's expr: lines (each rule's expression is
// on one line; deploy/k8stest parses the file with Prometheus' own rule
// parser and checks that this scan sees every rule).
func ruleExprs(t *testing.T) []usedExpr {
	t.Helper()
	f, err := os.Open(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []usedExpr
	alert := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if a, ok := strings.CutPrefix(l, "- alert:"); ok {
			alert = strings.TrimSpace(a)
		}
		if e, ok := strings.CutPrefix(l, "expr:"); ok {
			out = append(out, usedExpr{"alert " + alert, strings.TrimSpace(e)})
		}
	}
	if err := sc.Err(); err != nil || len(out) == 0 {
		t.Fatalf("%s: %d expressions, %v", rulesFile, len(out), err)
	}
	return out
}

var (
	promqlIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promqlGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"inf": true, "nan": true, "Inf": true, "NaN": true}
)

// promqlMetrics returns the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, ranges and groupings are
// removed, less keywords, functions and aggregations (followed by "(").
func promqlMetrics(expr string) []string {
	var b strings.Builder
	depthBrace, depthBracket := 0, 0
	var quote rune
	for _, r := range expr {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
			continue
		case r == '"' || r == '\'' || r == '`':
			quote = r
			continue
		case r == '{':
			depthBrace++
			continue
		case r == '}':
			depthBrace--
			b.WriteRune(' ')
			continue
		case r == '[':
			depthBracket++
			continue
		case r == ']':
			depthBracket--
			b.WriteRune(' ')
			continue
		}
		if depthBrace == 0 && depthBracket == 0 {
			b.WriteRune(r)
		}
	}
	s := promqlGrouping.ReplaceAllString(b.String(), " ")
	var out []string
	for _, loc := range promqlIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // the exponent or unit of a number (1e3, 0.5)
		}
		if promqlKeywords[id] || strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t"), "(") {
			continue
		}
		out = append(out, id)
	}
	return out
}

func TestPromqlMetrics(t *testing.T) {
	for expr, want := range map[string]string{
		`max by (kme) (qkdkms_raft_is_leader) == 0`:                                            "qkdkms_raft_is_leader",
		`histogram_quantile(0.99, sum by (le) (rate(a_bucket{call="x",k=~"$kme"}[5m])))`:       "a_bucket",
		`(min by (kme, pod) (b) - time()) < 14 * 86400`:                                        "b",
		`sum(increase(c{o="aborted"}[15m])) > 0 and sum by (k) (increase(d{o="ok"}[1h])) == 0`: "c d",
		`a / on (x) group_left (y) b offset 5m`:                                                "a b",
		`max(e) > 1e3 or vector(0)`:                                                            "e",
		`qkdkms_raft_commit_latency_seconds{stat="avg"} > bool 0.5`:                            "qkdkms_raft_commit_latency_seconds",
		`count({__name__=~"x"})`:                                                               "",
		`sum without (pod) (rate(f[5m])) * 60`:                                                 "f",
		`label_replace(g, "dst", "$1", "src", "(.*)")`:                                         "g",
	} {
		if got := strings.Join(promqlMetrics(expr), " "); got != want {
			t.Errorf("%s: %q, want %q", expr, got, want)
		}
	}
}

// exposedNames lists the metric names in a Prometheus text exposition.
func exposedNames(body string) map[string]bool {
	names := map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			names[l[:i]] = true
		}
	}
	return names
}
