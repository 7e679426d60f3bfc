package link

import (
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
	if n := needBytes(conn("a", "A", "B", 0, 8, 10)); n != 2*256/8 {
		t.Fatalf("needBytes = %d, want %d", n, 2*256/8)
	}
}
