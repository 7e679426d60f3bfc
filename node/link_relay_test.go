package node

import (
	"bytes"
	"context"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// TestLinkRelayPool: links with relay_pool_bytes fill the connection's
// pool and both directions of the relay pool to the target, the same relay
// key at both sites; link status and the qkdkms_relay_pool_bytes gauge
// show it (node/CONFIG.md, "Relay pool").
func TestLinkRelayPool(t *testing.T) {
	if testing.Short() {
		t.Skip("runs QKD sessions")
	}
	const target = 4096
	a, b := linkedSitesDrivers(t, 1, 4096, LinkConfig{Native: true, FiberKm: 25, BlockBits: 200_000},
		[]PeerLink{{Peer: "receiver_app", Driver: "sim", RelayPoolBytes: target}},
		[]PeerLink{{Peer: "sender_app", Driver: "sim", RelayPoolBytes: target}})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scaled(3*time.Minute))
	defer cancel()
	registerLinked(t, ctx, a, 20)
	waitStored(t, a, b, "ghi", "jkl", 20)
	testenv.WaitFor(t, "the relay pool at target both ways at both sites", func() bool {
		for _, s := range []*testSite{a, b} {
			if st := linkStatus(t, s); st.RelayOut < target || st.RelayIn < target {
				return false
			}
		}
		return true
	})
	samePools(t, a, b, "ghi", "jkl")
	ra := a.leader().Store().RelayStreams("receiver_app")
	rb := b.leader().Store().RelayStreams("sender_app")
	for dir := range ra {
		if ra[dir].Stream != rb[dir].Stream {
			t.Fatalf("relay direction %d: %d bytes at sender_app, %d at receiver_app", dir, ra[dir].Stream, rb[dir].Stream)
		}
		ka, errA := a.leader().Store().RelayKey(ctx, "receiver_app", uint8(dir), 0, target)
		kb, errB := b.leader().Store().RelayKey(ctx, "sender_app", uint8(dir), 0, target)
		if errA != nil || errB != nil || !bytes.Equal(ka, kb) {
			t.Fatalf("relay direction %d: the sites' relay key differs (%v, %v)", dir, errA, errB)
		}
	}
	out := raftstore.RelayDir("sender_app", "receiver_app")
	st := linkStatus(t, a)
	// The link's pool level counts its last block too (the relay holds
	// that part back: RelayStream.Unconfirmed).
	level := func(r raftstore.RelayStream) int64 { return int64(r.Stream - r.Used) }
	if st.RelayTarget != target || st.RelayOut != level(ra[out]) || st.RelayIn != level(ra[1-out]) {
		t.Errorf("sender_app's link status: relay target %d, out %d, in %d; streams %+v", st.RelayTarget, st.RelayOut, st.RelayIn, ra)
	}
	mfs, err := a.leader().metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "qkdkms_relay_pool_bytes" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["peer"] == "receiver_app" {
				got[labels["direction"]] = m.GetGauge().GetValue()
			}
		}
	}
	if got["out"] < target || got["in"] < target || len(got) != 2 {
		t.Errorf("qkdkms_relay_pool_bytes{peer=receiver_app} = %v, want out and in ≥ %d", got, target)
	}
}
