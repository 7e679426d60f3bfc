package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"qkdkms/etsi"
	"qkdkms/node/forward"
	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
)

// importBlock imports identical random bits at both sites through addr's
// admin API and returns them.
func importBlock(t *testing.T, op *http.Client, addr, id string) []byte {
	t.Helper()
	bits := make([]byte, 1024) // 32 keys of 256 bits
	_, _ = rand.Read(bits)
	body, _ := json.Marshal(map[string]any{"master_SAE_ID": "alice", "slave_SAE_ID": "bob",
		"block_id": id, "bits": base64.StdEncoding.EncodeToString(bits)})
	var code int
	var rb []byte
	testenv.WaitFor(t, "the import of "+id+" at "+addr, func() bool {
		resp, err := op.Post("https://"+addr+"/admin/v1/blocks", "application/json", bytes.NewReader(body))
		if err != nil {
			return false
		}
		rb, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		code = resp.StatusCode
		return code != http.StatusServiceUnavailable
	})
	if code != http.StatusOK {
		t.Fatalf("import block %s: %d %s", id, code, rb)
	}
	return bits
}

// leaks lists the secrets (block bits and key bytes) found in data, as the
// checker's at-rest scan does: every 16-byte window at 8-byte steps, raw
// and base64-encoded.
func leaks(data []byte, secrets map[string][]byte) []string {
	var out []string
	for name, s := range secrets {
		for i := 0; i+16 <= len(s); i += 8 {
			w := s[i : i+16]
			if bytes.Contains(data, w) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString(w)[:20])) {
				out = append(out, fmt.Sprintf("%s at byte %d", name, i))
				break
			}
		}
	}
	return out
}

// TestBackupRestore: a backup of a running 3-node master site, taken
// through a follower with an operator certificate, is sealed (no key bit
// in it, a changed byte, another KEK or another site's ID is refused);
// restored into a fresh 3-node site on the old addresses it gives every
// node the backup's state (digests), serves no key and records no relay
// until reconciled with the peer site, and afterwards issues keys from
// past the peer's pool position only, which the peer serves identically.
func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("two sites, one restored")
	}
	p := newTestPKI(t)
	a := allocSite(t, p, "site_a", 3)
	b := allocSite(t, p, "site_b", 1)
	a.boot(map[string][]string{"site_b": b.allAddrs()})
	b.boot(map[string][]string{"site_a": a.allAddrs()})
	alice, bob := newSAE(t, p, "alice"), newSAE(t, p, "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	b.leader()
	if err := a.follower().services.kme.RegisterConnection(ctx, etsi.ConnectionInfo{
		SourceKME: "site_a", TargetKME: "site_b", MasterSAE: "alice", SlaveSAE: "bob",
		KeySize: 256, MaxKeyCount: 100000, MaxKeyPerRequest: 16, MinKeySize: 64, MaxKeySize: 1024,
	}); err != nil {
		t.Fatalf("register: %v", err)
	}
	opCrt, opKey := p.operator(t, "site_a")
	op := httpClient(p.clientTLS(t, opCrt, opKey))
	secrets := map[string][]byte{}
	for i := range 3 {
		secrets[fmt.Sprint("block ", i)] = importBlock(t, op, a.follower().Addr(), fmt.Sprint("blk-", i))
	}
	served := map[string]bool{} // every key's bytes handed out so far
	issue := func(addr string, n int) []string {
		t.Helper()
		var ids []string
		for _, k := range alice.enc(addr, "bob", n) {
			raw, err := base64.StdEncoding.DecodeString(k.Key)
			if err != nil || len(raw) != 32 {
				t.Fatalf("key %s: %d bytes, %v", k.KeyID, len(raw), err)
			}
			if served[string(raw)] {
				t.Fatalf("key bytes of %s served before", k.KeyID)
			}
			served[string(raw)] = true
			secrets["key "+k.KeyID] = raw
			ids = append(ids, k.KeyID)
		}
		return ids
	}
	fetch := func(ids []string) {
		t.Helper()
		code, keys := bob.dec(b.leader().Addr(), "alice", ids)
		if code != http.StatusOK || len(keys) != len(ids) {
			t.Fatalf("dec_keys at site_b: %d, %d keys", code, len(keys))
		}
		for _, k := range keys {
			raw, _ := base64.StdEncoding.DecodeString(k.Key)
			if !bytes.Equal(raw, secrets["key "+k.KeyID]) {
				t.Fatalf("key %s differs between the sites", k.KeyID)
			}
		}
	}
	// Traffic before the backup: some keys fetched, some still pending.
	fetch(issue(a.follower().Addr(), 4))
	pendingAtBackup := issue(a.leader().Addr(), 3)

	digest := a.waitDigests()
	admin := p.adminClient(t, "site_a", a.follower().Addr())
	bk, err := admin.Backup(ctx)
	if err != nil {
		t.Fatalf("backup through a follower: %v", err)
	}
	if h := bk.Header; h.KMEID != "site_a" || h.Digest != digest || h.Index == 0 || h.Term == 0 || h.Format != raftstore.BackupFormat {
		t.Fatalf("backup header %+v, want site_a at digest %s", h, digest)
	}
	nodeCrt, nodeKey := p.node(t, "site_a", "n1")
	nodeAdmin, err := NewAdminClient([]string{a.follower().Addr()}, p.caFile(), nodeCrt, nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodeAdmin.Backup(ctx); !errors.Is(err, forward.ErrForbidden) {
		t.Fatalf("backup with a node certificate: %v, want forbidden", err)
	}
	// After the backup the site goes on: the peer consumes keys the backup
	// knows as pending, and keys the backup never saw.
	fetch(pendingAtBackup)
	fetch(issue(a.follower().Addr(), 5))

	if len(leaks(append(slices.Clone(bk.File), secrets["block 1"][200:240]...), secrets)) == 0 {
		t.Fatal("the scan misses plaintext appended to the file")
	}
	if l := leaks(bk.File, secrets); len(l) > 0 {
		t.Fatalf("the backup file holds plaintext key material: %v", l)
	}
	file := filepath.Join(t.TempDir(), "site_a.backup")
	if err := os.WriteFile(file, bk.File, 0o600); err != nil {
		t.Fatal(err)
	}
	kek, err := raftstore.LoadKEK(a.kek)
	if err != nil {
		t.Fatal(err)
	}
	otherKEK := make([]byte, raftstore.KEKSize)
	_, _ = rand.Read(otherKEK)
	boot := map[string]string{}
	for id, addr := range a.addrs {
		boot[id] = addr
	}
	flip := func(at int) []byte {
		c := slices.Clone(bk.File)
		c[at] ^= 1
		return c
	}
	for _, tc := range []struct {
		name string
		file []byte
		kek  []byte
		kme  string
	}{
		{"a byte of the header changed", flip(40), kek, "site_a"},
		{"a byte of the body changed", flip(len(bk.File) / 2), kek, "site_a"},
		{"the tag changed", flip(len(bk.File) - 1), kek, "site_a"},
		{"truncated", bk.File[:len(bk.File)-100], kek, "site_a"},
		{"another KEK", bk.File, otherKEK, "site_a"},
		{"another site", bk.File, kek, "site_b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "bad.backup")
			if err := os.WriteFile(f, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "data")
			_, err := RestoreDataDir(RestoreOptions{File: f, KMEID: tc.kme, KEK: tc.kek, DataDir: dir, Bootstrap: boot})
			if !errors.Is(err, raftstore.ErrBadBackup) {
				t.Fatalf("restore: %v, want ErrBadBackup", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused restore touched the data directory: %v", err)
			}
		})
	}

	// The whole site is lost; a fresh one is restored on its addresses.
	for _, n := range a.live() {
		a.crash(n.ID())
	}
	r := allocSiteAt(t, p, "site_a", a.kek, a.ids, a.addrs)
	r.dataDirs = map[string]string{}
	var restored *raftstore.Backup
	for id := range boot {
		r.dataDirs[id] = filepath.Join(t.TempDir(), "restored-"+id)
		restored, err = RestoreDataDir(RestoreOptions{File: file, KMEID: "site_a", KEK: kek, DataDir: r.dataDirs[id], Bootstrap: boot})
		if err != nil {
			t.Fatalf("restore %s: %v", id, err)
		}
	}
	if _, err := RestoreDataDir(RestoreOptions{File: file, KMEID: "site_a", KEK: kek, DataDir: r.dataDirs["n1"], Bootstrap: boot}); !errors.Is(err, raftstore.ErrInvalid) {
		t.Fatalf("restore into a data directory that holds state: %v", err)
	}
	if got := restored.Pending(); !slices.Equal(got, []string{"site_b"}) {
		t.Fatalf("pending peers %v, want [site_b]", got)
	}
	r.boot(map[string][]string{"site_b": b.allAddrs()})
	if d := r.waitDigests(); d != restored.RestoredDigest() {
		t.Fatalf("restored site digest %s, want %s", d, restored.RestoredDigest())
	}
	radmin := p.adminClient(t, "site_a", r.follower().Addr())
	pos, err := radmin.Positions(ctx)
	if err != nil || !slices.Equal(pos.Pending, []string{"site_b"}) {
		t.Fatalf("positions of the restored site: %+v, %v", pos, err)
	}

	// Not reconciled: no key, no block, 503 with the reason.
	code, body := alice.post(r.follower().Addr(), "/api/v1/keys/bob/enc_keys", etsi.KeyRequest{Number: 1})
	if code != http.StatusServiceUnavailable {
		t.Fatalf("enc_keys before reconciling: %d %s, want 503", code, body)
	}
	t.Logf("enc_keys before reconciling: %d %s", code, body)
	bits := make([]byte, 1024)
	reqBody, _ := json.Marshal(map[string]any{"master_SAE_ID": "alice", "slave_SAE_ID": "bob",
		"block_id": "blk-refused", "bits": base64.StdEncoding.EncodeToString(bits)})
	resp, err := op.Post("https://"+r.follower().Addr()+"/admin/v1/blocks", "application/json", bytes.NewReader(reqBody))
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK || !strings.Contains(string(rb), forward.CodeNotReconciled) {
		t.Fatalf("block import before reconciling: %d %s, want not_reconciled", resp.StatusCode, rb)
	}

	// Reconcile with site_b's positions.
	bpos, err := p.adminClient(t, "site_b", b.allAddrs()...).Positions(ctx)
	if err != nil || len(bpos.Conns) != 1 {
		t.Fatalf("site_b positions: %+v, %v", bpos, err)
	}
	if _, err := radmin.Reconcile(ctx, "site_c", bpos); !errors.Is(err, ErrAdmin) {
		t.Fatalf("reconcile with positions of another site: %v", err)
	}
	after, err := radmin.Reconcile(ctx, "site_b", bpos)
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if len(after.Pending) != 0 || len(after.Conns) != 1 || after.Conns[0].Carve != bpos.Conns[0].End || after.Conns[0].End != bpos.Conns[0].End {
		t.Fatalf("after reconciling: %+v, site_b at %+v", after, bpos.Conns[0])
	}
	r.waitDigests()

	// Serving again: from a block imported now at both sites, never from
	// anything site_b may have consumed.
	secrets["block new"] = importBlock(t, op, r.follower().Addr(), "blk-after-restore")
	ids := issue(r.follower().Addr(), 4)
	fetch(ids)
	for _, id := range ids {
		if !bytes.Contains(secrets["block new"], secrets["key "+id]) {
			t.Fatalf("key %s after reconciling is not from the block imported after it", id)
		}
	}
}
