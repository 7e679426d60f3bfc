package simrun

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"qkdkms/plugins/host"
	"qkdkms/quantum/sim"
)

func nativeRunner(t *testing.T) host.Runner {
	t.Helper()
	r, err := host.Native(nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRunTiny(t *testing.T) {
	o := Options{
		Distances: []float64{0, 50},
		Blocks:    []int{100000},
		Sessions:  2,
		Model:     sim.DefaultModel(),
		Seed:      3,
		TagBits:   64,
		EpsSec:    1e-9,
		Runner:    nativeRunner(t),
	}
	rows, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	for _, r := range rows {
		t.Logf("%+v", r)
		if r.Sessions != 2 || r.Aborted != 0 {
			t.Errorf("%g km: %d sessions, %d aborted (%s)", r.Km, r.Sessions, r.Aborted, r.Note)
		}
		// Two sessions of ~10^5 sifted bits each.
		if r.Sifted < 180000 || r.Sifted > 220000 {
			t.Errorf("%g km: sifted %d, want ≈ 2·10^5", r.Km, r.Sifted)
		}
		if r.QBER < 0.005 || r.QBER > 0.02 {
			t.Errorf("%g km: QBER %.4f, model ≈ 1%%", r.Km, r.QBER)
		}
		if r.F < 1 || r.F > 1.5 {
			t.Errorf("%g km: f = %.3f", r.Km, r.F)
		}
		if r.Final == 0 || r.PerPulse <= 0 || r.PerPulse >= r.GLLP {
			t.Errorf("%g km: final %d, %.3g bits/pulse vs GLLP %.3g", r.Km, r.Final, r.PerPulse, r.GLLP)
		}
		if want := r.PerPulse * o.Model.PulseRate; r.PerSecond < 0.99*want || r.PerSecond > 1.01*want {
			t.Errorf("%g km: %.4g bits/s, want %.4g", r.Km, r.PerSecond, want)
		}
		for i, d := range r.StepWall {
			if d <= 0 {
				t.Errorf("%g km: step %d has no wall time", r.Km, i)
			}
		}
	}
	if rows[1].PerPulse >= rows[0].PerPulse {
		t.Errorf("rate at 50 km %.3g ≥ rate at 0 km %.3g", rows[1].PerPulse, rows[0].PerPulse)
	}
}

func TestRunEveAborts(t *testing.T) {
	m := sim.DefaultModel()
	m.Eve = 1
	rows, err := Run(context.Background(), Options{
		Distances: []float64{25}, Blocks: []int{100000}, Sessions: 1, Model: m, Seed: 1,
		TagBits: 64, EpsSec: 1e-9, Runner: nativeRunner(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := rows[0]
	t.Logf("%+v", r)
	if r.Aborted != 1 || r.Final != 0 || !strings.Contains(r.Note, "no key") {
		t.Fatalf("full intercept-resend: aborted %d, final %d, note %q", r.Aborted, r.Final, r.Note)
	}
}

func TestRunCLI(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"native", []string{"--native", "--quiet", "--distances", "25", "--blocks", "50000,100000"}, 0,
			[]string{"native steps", "GLLP/pulse", "reconcile(ms)", "row 25 50000", "row 25 100000"}},
		{"bad distances", []string{"--distances", "x"}, 2, nil},
		{"bad blocks", []string{"--blocks", "1.5"}, 2, nil},
		{"bad eve", []string{"--native", "--eve", "2"}, 2, nil},
		{"extra args", []string{"--native", "foo"}, 2, nil},
	}
	if !testing.Short() {
		cases = append(cases, struct {
			name string
			args []string
			code int
			want []string
		}{"wasm", []string{"--distances", "25", "--blocks", "100000"}, 0, []string{"wasm steps", "row 25 100000"}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := RunCLI(context.Background(), c.args, &out, &errb)
			t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
			if code != c.code {
				t.Fatalf("exit %d, want %d", code, c.code)
			}
			var rowKeys []string
			for _, line := range strings.Split(out.String(), "\n") {
				if f := strings.Fields(line); len(f) > 2 && !strings.HasPrefix(line, "#") {
					rowKeys = append(rowKeys, "row "+f[0]+" "+f[1])
				}
			}
			text := out.String() + "\n" + strings.Join(rowKeys, "\n")
			for _, w := range c.want {
				if !strings.Contains(text, w) {
					t.Errorf("output lacks %q", w)
				}
			}
		})
	}
}
