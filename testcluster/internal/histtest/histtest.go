// Package histtest builds synthetic histories on a fake clock for the
// tests of the checker and the report: calls, faults and heals at chosen
// instants, without a cluster.
package histtest

import (
	"fmt"
	"time"

	"qkdkms/testcluster/history"
)

// Synth is a history under construction and its clock.
type Synth struct {
	H   *history.History
	Now time.Time
}

// New starts an empty history at 2026-01-01 00:00 UTC.
func New() *Synth {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return &Synth{H: &history.History{Start: t0}, Now: t0}
}

// Tick advances the clock by d and returns the new instant.
func (s *Synth) Tick(d time.Duration) time.Time { s.Now = s.Now.Add(d); return s.Now }

// Key is the i-th key: a UUID-shaped ID and 36 distinct bytes.
func Key(i int) history.KeyRecord {
	return history.NewKeyRecord(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), []byte(fmt.Sprintf("key-bytes-%026d", i)))
}

// Enc records a 10 ms enc_keys call by master ghi for slave jkl with this
// outcome and HTTP status, returning keys (asking for one key when none).
func (s *Synth) Enc(out history.Outcome, status int, keys ...history.KeyRecord) {
	start := s.Now
	end := s.Tick(10 * time.Millisecond)
	n := len(keys)
	if n == 0 {
		n = 1
	}
	s.H.Add(history.Op{Client: "m", Kind: history.OpEnc, Master: "ghi", Slave: "jkl", Number: n, Start: start, End: end, Outcome: out, Status: status, Keys: keys})
}

// Dec records a successful 10 ms dec_keys call by slave of keys issued by
// master ghi.
func (s *Synth) Dec(slave string, keys ...history.KeyRecord) {
	start := s.Now
	end := s.Tick(10 * time.Millisecond)
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	s.H.Add(history.Op{Client: "s", Kind: history.OpDec, Master: "ghi", Slave: slave, KeyIDs: ids, Start: start, End: end, Outcome: history.OK, Status: 200, Keys: keys})
}
