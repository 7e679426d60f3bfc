package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/plugins/testenv"
)

// etsiSAE is an SAE talking HTTPS to nodes with its own certificate.
type etsiSAE struct {
	t    testing.TB
	id   string
	http *http.Client
}

func newSAE(t testing.TB, p *testPKI, id string) *etsiSAE {
	t.Helper()
	l, err := p.ca.IssueSAE(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Write(p.dir, id); err != nil {
		t.Fatal(err)
	}
	cfg := p.clientTLS(t, filepath.Join(p.dir, id+".crt"), filepath.Join(p.dir, id+".key"))
	return &etsiSAE{t: t, id: id, http: httpClient(cfg)}
}

func (s *etsiSAE) post(addr, path string, body any) (int, []byte) {
	s.t.Helper()
	b, _ := json.Marshal(body)
	resp, err := s.http.Post("https://"+addr+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// enc asks addr for n keys for slave, retrying 503 (election, relay) for a while.
func (s *etsiSAE) enc(addr, slave string, n int) []etsi.KeyObject {
	s.t.Helper()
	var keys []etsi.KeyObject
	testenv.WaitFor(s.t, "enc_keys at "+addr+" to answer other than 503", func() bool {
		code, body := s.post(addr, "/api/v1/keys/"+slave+"/enc_keys", etsi.KeyRequest{Number: n})
		if code == http.StatusOK {
			var kc etsi.KeyContainer
			if err := json.Unmarshal(body, &kc); err != nil {
				s.t.Fatalf("enc_keys body: %v", err)
			}
			if len(kc.Keys) != n {
				s.t.Fatalf("enc_keys returned %d keys, want %d", len(kc.Keys), n)
			}
			keys = kc.Keys
			return true
		}
		if code != http.StatusServiceUnavailable && code != 0 {
			s.t.Fatalf("enc_keys at %s: %d %s", addr, code, body)
		}
		s.t.Logf("enc_keys at %s: %d %s (retrying)", addr, code, strings.TrimSpace(string(body)))
		return false
	})
	return keys
}

func (s *etsiSAE) dec(addr, master string, ids []string) (int, []etsi.KeyObject) {
	s.t.Helper()
	req := etsi.KeyIDs{}
	for _, id := range ids {
		req.KeyIDs = append(req.KeyIDs, etsi.KeyIDRef{KeyID: id})
	}
	code, body := s.post(addr, "/api/v1/keys/"+master+"/dec_keys", req)
	if code != http.StatusOK {
		return code, nil
	}
	var kc etsi.KeyContainer
	if err := json.Unmarshal(body, &kc); err != nil {
		s.t.Fatalf("dec_keys body: %v", err)
	}
	return code, kc.Keys
}

// TestSiteFailover: a 3-node master site and a 1-node slave site on loopback
// with mTLS. Writes go through followers; the master site loses its leader
// twice (graceful Close, then an abrupt Kill), keeps issuing through the
// survivors, takes the nodes back from their data dirs, and ends with equal
// digests, no key ID or key value issued twice, and every key fetched once
// by the slave with identical bytes.
func TestSiteFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node failover")
	}
	p := newTestPKI(t)
	a := allocSite(t, p, "site_a", 3)
	b := allocSite(t, p, "site_b", 1)
	a.boot(map[string][]string{"site_b": b.allAddrs()})
	b.boot(map[string][]string{"site_a": a.allAddrs()})
	alice, bob := newSAE(t, p, "alice"), newSAE(t, p, "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Register through a follower of A (forwarded to A's leader, relayed to B).
	fa := a.follower()
	b.leader()
	err := fa.services.kme.RegisterConnection(ctx, etsi.ConnectionInfo{
		SourceKME: "site_a", TargetKME: "site_b", MasterSAE: "alice", SlaveSAE: "bob",
		KeySize: 256, MaxKeyCount: 100000, MaxKeyPerRequest: 16, MaxSAEIDCount: 0,
		MinKeySize: 64, MaxKeySize: 1024,
	})
	if err != nil {
		t.Fatalf("register via follower: %v", err)
	}
	// Import identical blocks at both sites through A's follower's admin API.
	opCrt, opKey := p.operator(t, "site_a")
	op := httpClient(p.clientTLS(t, opCrt, opKey))
	for i := 0; i < 4; i++ {
		bits := make([]byte, 1024) // 32 keys of 256 bits
		_, _ = rand.Read(bits)
		body, _ := json.Marshal(map[string]any{"master_SAE_ID": "alice", "slave_SAE_ID": "bob",
			"block_id": fmt.Sprintf("blk-%d", i), "bits": base64.StdEncoding.EncodeToString(bits)})
		resp, err := op.Post("https://"+fa.Addr()+"/admin/v1/blocks", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		rb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("import block %d via follower: %d %s", i, resp.StatusCode, rb)
		}
	}

	issued := map[string][]byte{} // key ID → bytes
	seenBits := map[string]string{}
	record := func(keys []etsi.KeyObject) []string {
		var ids []string
		for _, k := range keys {
			if _, dup := issued[k.KeyID]; dup {
				t.Fatalf("key ID %s issued twice", k.KeyID)
			}
			raw, err := base64.StdEncoding.DecodeString(k.Key)
			if err != nil || len(raw) != 32 {
				t.Fatalf("key %s: %d bytes, %v", k.KeyID, len(raw), err)
			}
			if prev, dup := seenBits[string(raw)]; dup {
				t.Fatalf("key bytes of %s issued again as %s", prev, k.KeyID)
			}
			issued[k.KeyID], seenBits[string(raw)] = raw, k.KeyID
			ids = append(ids, k.KeyID)
		}
		return ids
	}
	fetch := func(ids []string) {
		t.Helper()
		code, keys := bob.dec(b.leader().Addr(), "alice", ids)
		if code != http.StatusOK || len(keys) != len(ids) {
			t.Fatalf("dec_keys: %d, %d keys", code, len(keys))
		}
		for _, k := range keys {
			raw, _ := base64.StdEncoding.DecodeString(k.Key)
			if !bytes.Equal(raw, issued[k.KeyID]) {
				t.Fatalf("key %s differs between sites", k.KeyID)
			}
		}
		if code, _ := bob.dec(b.leader().Addr(), "alice", ids[:1]); code != http.StatusBadRequest {
			t.Fatalf("second fetch of %s: %d, want 400", ids[0], code)
		}
	}
	round := func(label string) {
		t.Helper()
		for _, n := range a.live() {
			ids := record(alice.enc(n.Addr(), "bob", 4))
			fetch(ids)
		}
		t.Logf("%s: %d keys issued so far", label, len(issued))
	}

	round("three nodes")
	if code, _ := alice.dec(b.leader().Addr(), "alice", []string{"00000000-0000-0000-0000-000000000000"}); code == http.StatusOK {
		t.Fatal("dec_keys by the master succeeded")
	}

	// 1. Graceful stop of the leader: it hands leadership over first.
	old := a.leader()
	if err := a.c.Stop(ctx, old.ID()); err != nil {
		t.Fatalf("close leader: %v", err)
	}
	round("after graceful stop of " + old.ID())
	a.restart(old.ID())
	a.waitDigests()
	round("after restart of " + old.ID())

	// 2. Abrupt stop of the new leader.
	old = a.leader()
	a.crash(old.ID())
	round("after kill of " + old.ID())
	a.restart(old.ID())
	digest := a.waitDigests()
	round("after restart of " + old.ID())
	a.waitDigests()
	t.Logf("site_a digest %.16s, %d keys issued, all unique, all matched", digest, len(issued))

	// The ETSI and pool metrics saw it.
	l := a.leader()
	opC := httpClient(p.clientTLS(t, opCrt, opKey))
	body := scrape(t, opC, l)
	for _, want := range []string{`qkdkms_pool_stored_keys{master="alice",slave="bob"}`, `qkdkms_keys_burned_total{master="alice",slave="bob"}`,
		`qkdkms_blocks_added_total{master="alice",slave="bob"} 4`, "qkdkms_raft_commit_latency_seconds"} {
		if !strings.Contains(body, want) {
			t.Errorf("leader metrics lack %q", want)
		}
	}
	var served bool
	for _, n := range a.live() {
		if strings.Contains(scrape(t, opC, n), `qkdkms_etsi_requests_total{call="enc_keys",code="200"}`) {
			served = true
		}
	}
	if !served {
		t.Error("no node counted an enc_keys 200")
	}
}
