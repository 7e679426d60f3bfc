package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/node/forward"
)

// TestConnectionCapAndDelete (issue 13 item 2): a site holds at most
// max_connections connections; a registration beyond it, at either site,
// is refused with code connection_limit (403) and changes nothing. An
// operator deletes a connection through the admin API: it goes at both
// sites, its pool and the keys issued but not fetched are burned (the
// slave's dec_keys finds nothing, also after the pair registers again),
// and the freed place takes a new connection.
func TestConnectionCapAndDelete(t *testing.T) {
	p := newTestPKI(t)
	a := allocSite(t, p, "site_a", 1)
	b := allocSite(t, p, "site_b", 1)
	a.maxConns, b.maxConns = 3, 2
	a.boot(map[string][]string{"site_b": b.allAddrs()})
	b.boot(map[string][]string{"site_a": a.allAddrs()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ka, sb := a.leader().services.kme, b.leader().Store()
	conn := func(master, slave string) etsi.ConnectionInfo {
		return etsi.ConnectionInfo{SourceKME: "site_a", TargetKME: "site_b", MasterSAE: master, SlaveSAE: slave,
			KeySize: 256, MaxKeyCount: 100, MaxKeyPerRequest: 1, MinKeySize: 256, MaxKeySize: 256}
	}
	count := func(n *Node) int {
		t.Helper()
		cs, err := n.Store().Connections(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(cs)
	}
	for _, pair := range [][2]string{{"m1", "s1"}, {"m2", "s2"}} {
		if err := ka.RegisterConnection(ctx, conn(pair[0], pair[1])); err != nil {
			t.Fatalf("register %v: %v", pair, err)
		}
	}
	// Identical re-registration at the cap is no new connection.
	if err := ka.RegisterConnection(ctx, conn("m1", "s1")); err != nil {
		t.Fatalf("re-register at the cap: %v", err)
	}

	// site_b is full: its answer to site_a's peer call is the JSON error.
	err := ka.RegisterConnection(ctx, conn("m3", "s3"))
	var we *forward.Error
	if !errors.Is(err, forward.ErrConnectionLimit) || !errors.As(err, &we) || we.Code != "connection_limit" || we.Status != http.StatusForbidden {
		t.Fatalf("register beyond site_b's cap: %v (%+v), want connection_limit 403", err, we)
	}
	if got, want := count(a.leader()), 2; got != want {
		t.Fatalf("site_a holds %d connections after the refusal, want %d", got, want)
	}
	if got := count(b.leader()); got != 2 {
		t.Fatalf("site_b holds %d connections after the refusal, want 2", got)
	}

	// Key material, and one key issued to m1 that s1 has not fetched.
	opCrt, opKey := p.operator(t, "site_a")
	op := httpClient(p.clientTLS(t, opCrt, opKey))
	bits := make([]byte, 1024)
	_, _ = rand.Read(bits)
	body, _ := json.Marshal(map[string]any{"master_SAE_ID": "m1", "slave_SAE_ID": "s1", "block_id": "blk-1",
		"bits": base64.StdEncoding.EncodeToString(bits)})
	resp, err := op.Post("https://"+a.leader().Addr()+"/admin/v1/blocks", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("import: %d %s", resp.StatusCode, rb)
	}
	keys, err := ka.EncKeys(ctx, etsi.EncRequest{MasterSAE: "m1", SlaveSAE: "s1", Number: 1, Size: 256})
	if err != nil || len(keys) != 1 {
		t.Fatalf("enc_keys: %v %v", keys, err)
	}

	admin := p.adminClient(t, "site_a", a.leader().Addr())
	res, err := admin.DeleteConnection(ctx, "m1", "s1")
	if err != nil || res.Here != "deleted" || res.Peer != "deleted" || res.PeerKME != "site_b" {
		t.Fatalf("delete: %+v, %v", res, err)
	}
	if count(a.leader()) != 1 || count(b.leader()) != 1 {
		t.Fatalf("after delete: %d and %d connections, want 1 and 1", count(a.leader()), count(b.leader()))
	}
	// Repeating it is a no-op.
	if res, err = admin.DeleteConnection(ctx, "m1", "s1"); err != nil || res.Here != "absent" || res.Peer != "absent" {
		t.Fatalf("delete again: %+v, %v", res, err)
	}
	dec := func() error {
		_, err := b.leader().services.kme.DecKeys(ctx, etsi.DecRequest{SlaveSAE: "s1", MasterSAE: "m1", KeyIDs: []string{keys[0].KeyID}})
		return err
	}
	if err := dec(); err == nil {
		t.Fatal("the slave fetched a key of a deleted connection")
	}
	// The freed place takes a new connection; the old pair starts empty
	// and its burned key stays burned.
	if err := ka.RegisterConnection(ctx, conn("m1", "s1")); err != nil {
		t.Fatalf("register after delete: %v", err)
	}
	st, err := sb.Connection(ctx, "m1", "s1")
	if err != nil || st.StoredBits != 0 || st.IssuedKeys != 0 {
		t.Fatalf("re-registered connection at site_b: %+v, %v", st, err)
	}
	if err := dec(); err == nil {
		t.Fatal("the slave fetched a burned key after the pair registered again")
	}
	if _, err := ka.EncKeys(ctx, etsi.EncRequest{MasterSAE: "m1", SlaveSAE: "s1", Number: 1, Size: 256}); err == nil {
		t.Fatal("the re-registered connection issued a key from the deleted pool")
	}

	// A bad request never reaches Raft.
	if _, err := admin.DeleteConnection(ctx, "m1", "m1"); !errors.Is(err, ErrAdmin) {
		t.Fatalf("delete m1→m1: %v", err)
	}
}
