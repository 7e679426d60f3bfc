package checker

import (
	"testing"
	"time"

	"qkdkms/testcluster/history"
	"qkdkms/testcluster/internal/histtest"
)

func TestCheckSyntheticHistories(t *testing.T) {
	tests := []struct {
		name  string
		build func(s *histtest.Synth)
		want  func(r *Report) int // the counter that must be 1
		clean bool
	}{
		{name: "clean run", clean: true, build: func(s *histtest.Synth) {
			for i := 0; i < 10; i++ {
				s.Enc(history.OK, 200, histtest.Key(i))
				s.Dec("jkl", histtest.Key(i))
			}
		}},
		{name: "ambiguous enc with one burned key is allowed", clean: true, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			s.Enc(history.Ambiguous, 0)
			s.Dec("jkl", histtest.Key(1))
			s.H.Burned = 1
		}},
		{name: "503 enc with burned key is allowed", clean: true, build: func(s *histtest.Synth) {
			s.Enc(history.Failed, 503)
			s.H.Burned = 1
		}},
		{name: "double-issued key ID", want: func(r *Report) int { return r.DoubleIssued }, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			s.Enc(history.OK, 200, histtest.Key(1))
			s.Dec("jkl", histtest.Key(1))
		}},
		{name: "distinct IDs with identical bytes", want: func(r *Report) int { return r.DuplicateKeyBytes }, build: func(s *histtest.Synth) {
			a, b := histtest.Key(1), histtest.Key(2)
			b.Digest = a.Digest
			s.Enc(history.OK, 200, a, b)
			s.Dec("jkl", a, b)
		}},
		{name: "issued key never fetched", want: func(r *Report) int { return r.NotFetchable }, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			s.Enc(history.OK, 200, histtest.Key(2))
			s.Dec("jkl", histtest.Key(1))
		}},
		{name: "key lost to an ambiguous dec_keys is reported, not a violation", clean: true, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			s.H.Add(history.Op{Kind: history.OpDec, Master: "ghi", Slave: "jkl", KeyIDs: []string{histtest.Key(1).ID}, Start: s.Now, End: s.Tick(time.Second), Outcome: history.Ambiguous})
		}},
		{name: "issued key fetched too late after healing", want: func(r *Report) int { return r.NotFetchable }, build: func(s *histtest.Synth) {
			s.H.MarkAt(s.Tick(time.Second), history.EventFault, "kill leader")
			s.Enc(history.OK, 200, histtest.Key(1))
			s.H.MarkAt(s.Tick(time.Second), history.EventHeal, "restart")
			s.Tick(31 * time.Second)
			s.Dec("jkl", histtest.Key(1))
		}},
		{name: "dec_keys for a never-issued key", want: func(r *Report) int { return r.DecNeverIssued }, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			s.Dec("jkl", histtest.Key(1), histtest.Key(99))
		}},
		{name: "second successful fetch", want: func(r *Report) int { return r.SecondFetch }, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			s.Dec("jkl", histtest.Key(1))
			s.Dec("jkl", histtest.Key(1))
		}},
		{name: "byte mismatch", want: func(r *Report) int { return r.ByteMismatch }, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			k := histtest.Key(1)
			k.Digest = histtest.Key(2).Digest
			s.Dec("jkl", k)
		}},
		{name: "burned exceeds ambiguous", want: func(r *Report) int { return int(r.ExcessBurned) }, build: func(s *histtest.Synth) {
			s.Enc(history.OK, 200, histtest.Key(1))
			s.Enc(history.Ambiguous, 0)
			s.Dec("jkl", histtest.Key(1))
			s.H.Burned = 2
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := histtest.New()
			tc.build(s)
			r := Check(s.H, Config{})
			t.Logf("%s", r.Markdown(tc.name))
			if tc.clean {
				if !r.OK() {
					t.Fatalf("clean history flagged: %v", r.Violations)
				}
				return
			}
			if r.OK() {
				t.Fatal("violation not detected")
			}
			if got := tc.want(r); got != 1 {
				t.Fatalf("counter = %d, want 1 (violations %v)", got, r.Violations)
			}
			if len(r.Violations) == 0 {
				t.Fatal("no violation text")
			}
		})
	}
}

func TestCheckCountsPhasesAndRecovery(t *testing.T) {
	s := histtest.New()
	s.Enc(history.OK, 200, histtest.Key(1)) // before
	s.Dec("jkl", histtest.Key(1))
	fault := s.Tick(time.Second)
	s.H.MarkAt(fault, history.EventFault, "kill leader")
	s.Enc(history.Failed, 503) // during, fails
	s.Tick(2 * time.Second)
	s.Enc(history.OK, 200, histtest.Key(2)) // during, first success: recovery = 2s + 10ms + 10ms
	s.H.MarkAt(s.Tick(time.Second), history.EventHeal, "restart")
	s.Enc(history.OK, 200, histtest.Key(3)) // after
	s.Dec("jkl", histtest.Key(2), histtest.Key(3))

	r := Check(s.H, Config{})
	if !r.OK() {
		t.Fatalf("violations: %v", r.Violations)
	}
	if r.Requests != 6 || r.Successes != 5 || r.Errors != 1 || r.Ambiguous != 0 {
		t.Fatalf("counts %d/%d/%d/%d", r.Requests, r.Successes, r.Errors, r.Ambiguous)
	}
	if r.ByKind[history.OpEnc].Requests != 4 || r.ByKind[history.OpDec].Successes != 2 {
		t.Fatalf("by kind %+v", r.ByKind)
	}
	if r.Latency[PhaseBefore].Count != 2 || r.Latency[PhaseDuring].Count != 1 || r.Latency[PhaseAfter].Count != 2 {
		t.Fatalf("phases %+v", r.Latency)
	}
	if want := 2*time.Second + 20*time.Millisecond; len(r.Recovery) != 1 || r.Recovery[0] != want {
		t.Fatalf("recovery %v, want [%v]", r.Recovery, want)
	}
	if r.BurnAllowance != 1 {
		t.Fatalf("burn allowance %d, want 1", r.BurnAllowance)
	}
}

func TestPercentile(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(ds, tc.q); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.q, got, tc.want)
		}
	}
}
