package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/node/link"
	"qkdkms/raftstore"
)

// linkedSites starts sender_app and receiver_app, n nodes each, joined by a
// QKD link over the simulated fiber with the step code run natively.
func linkedSites(t *testing.T, n int) (a, b *testSite) {
	t.Helper()
	p := newTestPKI(t)
	a, b = allocSite(t, p, "sender_app", n), allocSite(t, p, "receiver_app", n)
	psk := filepath.Join(t.TempDir(), "link.psk")
	secret := make([]byte, 4096)
	_, _ = rand.Read(secret)
	if err := os.WriteFile(psk, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	lc := LinkConfig{PSKFile: psk, Native: true, FiberKm: 25, BlockBits: 200_000}
	a.link, b.link = lc, lc
	a.boot(map[string][]string{"receiver_app": b.allAddrs()})
	b.boot(map[string][]string{"sender_app": a.allAddrs()})
	return a, b
}

// waitStored waits until the connection's pool at both sites' leaders
// holds at least want keys, and returns the two statuses.
func waitStored(t *testing.T, a, b *testSite, master, slave string, want int64, within time.Duration) (raftstore.ConnectionStatus, raftstore.ConnectionStatus) {
	t.Helper()
	deadline := time.Now().Add(within)
	var sa, sb raftstore.ConnectionStatus
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var errA, errB error
		sa, errA = a.leader().Store().Connection(ctx, master, slave)
		sb, errB = b.leader().Store().Connection(ctx, master, slave)
		cancel()
		if errA == nil && errB == nil && sa.StoredKeys >= want && sb.StoredKeys >= want {
			return sa, sb
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("pools did not reach %d keys within %v: sender %d, receiver %d", want, within, sa.StoredKeys, sb.StoredKeys)
	return sa, sb
}

func linkStatus(t *testing.T, s *testSite) link.Status {
	t.Helper()
	st := s.leader().links.statuses()
	if len(st) != 1 {
		t.Fatalf("%s: %d links", s.kme, len(st))
	}
	return st[0]
}

// TestLinkFillsPoolsAndKeysMatch: register a connection and keys flow from
// BB84 over the link into both sites' pools, up to max_key_count; enc_keys
// at the master site and dec_keys at the slave site give identical bytes.
func TestLinkFillsPoolsAndKeysMatch(t *testing.T) {
	if testing.Short() {
		t.Skip("runs QKD sessions")
	}
	a, b := linkedSites(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn := etsi.ConnectionInfo{SourceKME: "sender_app", TargetKME: "receiver_app", MasterSAE: "ghi", SlaveSAE: "jkl",
		KeySize: 256, MaxKeyCount: 200, MaxKeyPerRequest: 10, MinKeySize: 64, MaxKeySize: 1024}
	if err := a.follower().services.kme.RegisterConnection(ctx, conn); err != nil {
		t.Fatal(err)
	}
	sa, sb := waitStored(t, a, b, "ghi", "jkl", 200, 2*time.Minute)
	if sa.StoredBits != sb.StoredBits || sa.AddedBlocks != sb.AddedBlocks {
		t.Fatalf("pools differ: sender %d bits in %d blocks, receiver %d bits in %d blocks",
			sa.StoredBits, sa.AddedBlocks, sb.StoredBits, sb.AddedBlocks)
	}
	if sa.StoredKeys > int64(conn.MaxKeyCount) {
		t.Fatalf("pool overfilled: %d keys, max %d", sa.StoredKeys, conn.MaxKeyCount)
	}
	st := linkStatus(t, a)
	if st.Sessions == 0 || st.LastQBER <= 0 || st.LastQBER > 0.05 {
		t.Fatalf("link status after filling: %+v", st)
	}
	t.Logf("link: %d sessions, QBER %.3f, %d bits committed, %.0f bit/s", st.Sessions, st.LastQBER, st.CommittedBits, st.KeyRate)

	keys, err := a.follower().services.kme.EncKeys(ctx, etsi.EncRequest{MasterSAE: "ghi", SlaveSAE: "jkl", Number: 3, Size: 256})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{keys[0].KeyID, keys[1].KeyID, keys[2].KeyID}
	got, err := b.follower().services.kme.DecKeys(ctx, etsi.DecRequest{SlaveSAE: "jkl", MasterSAE: "ghi", KeyIDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if !bytes.Equal(keys[i].Bits, got[i].Bits) || len(keys[i].Bits) != 32 {
			t.Fatalf("key %s differs between the sites", keys[i].KeyID)
		}
	}
	// The pool refills after the keys were taken.
	waitStored(t, a, b, "ghi", "jkl", 200, time.Minute)
}
