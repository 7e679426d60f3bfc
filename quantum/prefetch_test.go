package quantum_test

import (
	"context"
	"fmt"
	"testing"

	"qkdkms/quantum"
	"qkdkms/quantum/sim"
)

// TestPrefetchSameFrames: a prefetching pair delivers exactly the frames a
// plain pair does — the same detections and the same choices — also when a
// frame sent ahead is never used (frame 3: Alice had nothing to fill) and
// when the pulse count changes between frames.
func TestPrefetchSameFrames(t *testing.T) {
	ctx := context.Background()
	m := sim.DefaultModel()
	plain, err := sim.New(m, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ahead, err := sim.New(m, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer ahead.Close()
	tx := quantum.NewPrefetchTransmitter(ahead.Tx)
	defer tx.Close()
	rx := quantum.NewPrefetchReceiver(ahead.Rx)
	defer rx.Close()

	for _, f := range []struct{ frame, n uint64 }{{1, 200_000}, {2, 200_000}, {4, 200_000}, {5, 100_000}, {6, 100_000}} {
		want := session(t, ctx, plain.Tx, plain.Rx, f.frame, f.n)
		got := session(t, ctx, tx, rx, f.frame, f.n)
		if want != got {
			t.Fatalf("frame %d: plain %s, prefetched %s", f.frame, want, got)
		}
	}
}

// session sends and receives one frame and summarises what both ends saw.
func session(t *testing.T, ctx context.Context, tx quantum.Transmitter, rx quantum.Receiver, frame, n uint64) string {
	t.Helper()
	st, err := tx.Send(ctx, frame, n)
	if err != nil {
		t.Fatal(err)
	}
	dets, err := rx.Receive(ctx, frame, n)
	if err != nil {
		t.Fatal(err)
	}
	idx := make([]uint64, len(dets))
	for i, d := range dets {
		idx[i] = d.Index
	}
	recs, err := tx.Choices(frame, idx)
	if err != nil {
		t.Fatal(err)
	}
	tx.Release(frame)
	var sum uint64
	for i, d := range dets {
		sum = sum*31 + d.Index*4 + uint64(d.Basis)*2 + uint64(d.Bit)
		sum = sum*31 + uint64(recs[i].Bit)*8 + uint64(recs[i].Basis)*4 + uint64(recs[i].Intensity)
	}
	return fmt.Sprintf("%d pulses %v, %d detections, digest %x", st.Pulses, st.PerIntensity, len(dets), sum)
}
