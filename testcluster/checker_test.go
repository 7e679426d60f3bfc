package testcluster

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// synth builds synthetic histories on a fake clock.
type synth struct {
	h   *History
	now time.Time
}

func newSynth() *synth {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return &synth{h: &History{Start: t0}, now: t0}
}

func (s *synth) tick(d time.Duration) time.Time { s.now = s.now.Add(d); return s.now }

func key(i int) KeyRecord {
	return NewKeyRecord(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), []byte(fmt.Sprintf("key-bytes-%026d", i)))
}

func (s *synth) enc(out Outcome, status int, keys ...KeyRecord) {
	start := s.now
	end := s.tick(10 * time.Millisecond)
	n := len(keys)
	if n == 0 {
		n = 1
	}
	s.h.Add(Op{Client: "m", Kind: OpEnc, Master: "ghi", Slave: "jkl", Number: n, Start: start, End: end, Outcome: out, Status: status, Keys: keys})
}

func (s *synth) dec(slave string, keys ...KeyRecord) {
	start := s.now
	end := s.tick(10 * time.Millisecond)
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	s.h.Add(Op{Client: "s", Kind: OpDec, Master: "ghi", Slave: slave, KeyIDs: ids, Start: start, End: end, Outcome: OK, Status: 200, Keys: keys})
}

func TestCheckSyntheticHistories(t *testing.T) {
	tests := []struct {
		name  string
		build func(s *synth)
		want  func(r *Report) int // the counter that must be 1
		clean bool
	}{
		{name: "clean run", clean: true, build: func(s *synth) {
			for i := 0; i < 10; i++ {
				s.enc(OK, 200, key(i))
				s.dec("jkl", key(i))
			}
		}},
		{name: "ambiguous enc with one burned key is allowed", clean: true, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			s.enc(Ambiguous, 0)
			s.dec("jkl", key(1))
			s.h.Burned = 1
		}},
		{name: "503 enc with burned key is allowed", clean: true, build: func(s *synth) {
			s.enc(Failed, 503)
			s.h.Burned = 1
		}},
		{name: "double-issued key ID", want: func(r *Report) int { return r.DoubleIssued }, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			s.enc(OK, 200, key(1))
			s.dec("jkl", key(1))
		}},
		{name: "distinct IDs with identical bytes", want: func(r *Report) int { return r.DuplicateKeyBytes }, build: func(s *synth) {
			a, b := key(1), key(2)
			b.Digest = a.Digest
			s.enc(OK, 200, a, b)
			s.dec("jkl", a, b)
		}},
		{name: "issued key never fetched", want: func(r *Report) int { return r.NotFetchable }, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			s.enc(OK, 200, key(2))
			s.dec("jkl", key(1))
		}},
		{name: "key lost to an ambiguous dec_keys is reported, not a violation", clean: true, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			s.h.Add(Op{Kind: OpDec, Master: "ghi", Slave: "jkl", KeyIDs: []string{key(1).ID}, Start: s.now, End: s.tick(time.Second), Outcome: Ambiguous})
		}},
		{name: "issued key fetched too late after healing", want: func(r *Report) int { return r.NotFetchable }, build: func(s *synth) {
			s.h.MarkAt(s.tick(time.Second), EventFault, "kill leader")
			s.enc(OK, 200, key(1))
			s.h.MarkAt(s.tick(time.Second), EventHeal, "restart")
			s.tick(31 * time.Second)
			s.dec("jkl", key(1))
		}},
		{name: "dec_keys for a never-issued key", want: func(r *Report) int { return r.DecNeverIssued }, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			s.dec("jkl", key(1), key(99))
		}},
		{name: "second successful fetch", want: func(r *Report) int { return r.SecondFetch }, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			s.dec("jkl", key(1))
			s.dec("jkl", key(1))
		}},
		{name: "byte mismatch", want: func(r *Report) int { return r.ByteMismatch }, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			k := key(1)
			k.Digest = key(2).Digest
			s.dec("jkl", k)
		}},
		{name: "burned exceeds ambiguous", want: func(r *Report) int { return int(r.ExcessBurned) }, build: func(s *synth) {
			s.enc(OK, 200, key(1))
			s.enc(Ambiguous, 0)
			s.dec("jkl", key(1))
			s.h.Burned = 2
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSynth()
			tc.build(s)
			r := Check(s.h, CheckConfig{})
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
	s := newSynth()
	s.enc(OK, 200, key(1)) // before
	s.dec("jkl", key(1))
	fault := s.tick(time.Second)
	s.h.MarkAt(fault, EventFault, "kill leader")
	s.enc(Failed, 503) // during, fails
	s.tick(2 * time.Second)
	s.enc(OK, 200, key(2)) // during, first success: recovery = 2s + 10ms + 10ms
	s.h.MarkAt(s.tick(time.Second), EventHeal, "restart")
	s.enc(OK, 200, key(3)) // after
	s.dec("jkl", key(2), key(3))

	r := Check(s.h, CheckConfig{})
	if !r.OK() {
		t.Fatalf("violations: %v", r.Violations)
	}
	if r.Requests != 6 || r.Successes != 5 || r.Errors != 1 || r.Ambiguous != 0 {
		t.Fatalf("counts %d/%d/%d/%d", r.Requests, r.Successes, r.Errors, r.Ambiguous)
	}
	if r.ByKind[OpEnc].Requests != 4 || r.ByKind[OpDec].Successes != 2 {
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

func TestHistoryRoundTrip(t *testing.T) {
	s := newSynth()
	s.enc(OK, 200, key(1))
	s.h.MarkAt(s.tick(time.Second), EventFault, "x")
	s.dec("jkl", key(1))
	s.h.Burned = 3
	p := filepath.Join(t.TempDir(), "history.json")
	if err := s.h.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	h, err := ReadHistory(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Ops()) != 2 || len(h.Events()) != 1 || h.Burned != 3 {
		t.Fatalf("round trip lost data: %d ops, %d events, burned %d", len(h.Ops()), len(h.Events()), h.Burned)
	}
	a, b := Check(s.h, CheckConfig{}), Check(h, CheckConfig{})
	if a.Markdown("x") != b.Markdown("x") {
		t.Fatalf("reports differ:\n%s\n%s", a.Markdown("x"), b.Markdown("x"))
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
