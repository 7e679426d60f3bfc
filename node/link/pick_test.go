package link

import (
	"fmt"
	"testing"

	"qkdkms/raftstore"
)

func conn(master, src, dst string, prio, stored, max int) raftstore.ConnectionStatus {
	return raftstore.ConnectionStatus{
		Connection: raftstore.Connection{SourceKME: src, TargetKME: dst, MasterSAE: master, SlaveSAE: master + "-s",
			KeySize: 256, MaxKeyCount: max, Priority: prio},
		StoredKeys: int64(stored), StoredBits: int64(stored) * 256,
	}
}

// TestPick: the scheduler fills connections between the two sites whose
// pool is below max_key_count, highest priority first, then the emptiest.
func TestPick(t *testing.T) {
	cases := []struct {
		name  string
		conns []raftstore.ConnectionStatus
		want  string // master of the pick, "" for none
	}{
		{"nothing registered", nil, ""},
		{"all full", []raftstore.ConnectionStatus{conn("a", "A", "B", 0, 10, 10)}, ""},
		{"other sites' connections ignored", []raftstore.ConnectionStatus{conn("a", "A", "C", 0, 0, 10)}, ""},
		{"either direction", []raftstore.ConnectionStatus{conn("a", "B", "A", 0, 0, 10)}, "a"},
		{"priority first", []raftstore.ConnectionStatus{conn("low", "A", "B", 0, 0, 10), conn("high", "A", "B", 5, 9, 10)}, "high"},
		{"then emptiest by ratio", []raftstore.ConnectionStatus{conn("half", "A", "B", 1, 50, 100), conn("tenth", "A", "B", 1, 1, 10)}, "tenth"},
		{"full high priority skipped", []raftstore.ConnectionStatus{conn("full", "A", "B", 9, 10, 10), conn("low", "A", "B", 0, 3, 10)}, "low"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := Pick(c.conns, "A", "B")
			if c.want == "" {
				if ok {
					t.Fatalf("picked %s, want none", got.MasterSAE)
				}
				return
			}
			if !ok || got.MasterSAE != c.want {
				t.Fatalf("picked %q (ok=%v), want %q", got.MasterSAE, ok, c.want)
			}
		})
	}
	if n := conn("a", "A", "B", 0, 8, 10).NeedBytes(); n != 2*256/8 {
		t.Fatalf("NeedBytes = %d, want %d", n, 2*256/8)
	}
}

// TestSchedulerFairShare: a flood of high-priority connections cannot
// starve a low-priority pool: with n connections in need, each gets at
// least one session in every 2n; priority still decides the other half.
func TestSchedulerFairShare(t *testing.T) {
	cases := []struct {
		name  string
		flood int // high-priority connections beside the low one
	}{
		{"alone", 0},
		{"one rival", 1},
		{"a flood of 200", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conns := []raftstore.ConnectionStatus{conn("victim", "A", "B", 0, 0, 1000)}
			for i := range c.flood {
				conns = append(conns, conn(fmt.Sprintf("flood%03d", i), "A", "B", 1000, 0, 1000))
			}
			n := len(conns)
			var s scheduler
			got := map[string]int{}
			var last int // turn the victim was last served
			for turn := 1; turn <= 6*n; turn++ {
				p, ok := s.next(conns, "A", "B")
				if !ok {
					t.Fatal("nothing picked with every pool empty")
				}
				got[p.MasterSAE]++
				if p.MasterSAE == "victim" {
					if turn-last > 2*n {
						t.Fatalf("victim waited %d sessions (turns %d to %d), more than 2n = %d", turn-last, last, turn, 2*n)
					}
					last = turn
				}
			}
			if got["victim"] < 3 {
				t.Fatalf("victim got %d of %d sessions, want ≥ 3 (1 in 2n)", got["victim"], 6*n)
			}
			if c.flood > 0 && c.flood < 10 {
				// The priority half goes to the flood: they get more.
				var flood int
				for k, v := range got {
					if k != "victim" {
						flood += v
					}
				}
				if flood <= got["victim"] {
					t.Fatalf("priority ignored: flood %d sessions, victim %d", flood, got["victim"])
				}
			}
		})
	}
	// A connection that filled up drops out of the rotation.
	var s scheduler
	full := conn("full", "A", "B", 0, 10, 10)
	for range 10 {
		if p, ok := s.next([]raftstore.ConnectionStatus{full, conn("b", "A", "B", 0, 0, 10)}, "A", "B"); !ok || p.MasterSAE != "b" {
			t.Fatalf("picked %q (ok=%v), want b", p.MasterSAE, ok)
		}
	}
}
