package raftstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Golden files of the Raft formats (docs/RAFT-FORMAT.md "Golden files"):
// testdata/cmd_<name>_v<version>.bin holds one encoded log entry per
// registry entry, testdata/snapshot_v<version>.json one snapshot per cluster
// version. The files are the formats' memory: a binary must keep decoding
// every one of them. Regenerate after adding a command or a version with
//
//	go test ./raftstore -run TestGolden -update
//
// and commit the new files; never regenerate an existing one to make a
// change pass (that is a format change old logs would not survive).
var update = flag.Bool("update", false, "rewrite raftstore/testdata golden files")

// goldenBytes returns n deterministic bytes (stand-ins for ciphertext: the
// FSM never decrypts, and no key bit belongs in testdata).
func goldenBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

var goldenConn = Connection{SourceKME: "A", TargetKME: "B", MasterSAE: "m", SlaveSAE: "s", KeySize: 64,
	MaxKeyCount: 100, MaxKeyPerRequest: 4, MaxSAEIDCount: 1, MinKeySize: 8, MaxKeySize: 512}

// goldenBodies is one sample body per registry entry, by "name_vN".
func goldenBodies() map[string]any {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()
	burn := &burnCmd{At: at, KeyIDs: []string{"k1"}}
	wasmSum := sha256.Sum256(goldenBytes(8, 5))
	consume := &consumeCmd{At: at, RequestID: "c1", Caller: "s", MasterSAE: "m", KeyIDs: []string{"k2"}}
	return map[string]any{
		"register_v1": &registerCmd{At: at, Conn: goldenConn},
		"update_v1":   &registerCmd{At: at, Conn: goldenConn},
		"delete_v1":   &deleteCmd{At: at, Master: "m", Slave: "s"},
		"add_block_v1": &addBlockCmd{At: at, ConnID: goldenConn.ID(), BlockID: "b1", Bytes: 16,
			Wrapped: goldenBytes(wrappedLen, 1), Sealed: goldenBytes(sealedLen(16), 2), LinkPeer: "B",
			AuthBytes: 8, AuthWrapped: goldenBytes(wrappedLen, 3), AuthSealed: goldenBytes(sealedLen(8), 4)},
		"issue_v1": &issueCmd{At: at, RequestID: "r1", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"}, Size: 64,
			KeyIDs: []string{"k1", "k2"}, IssuedAt: time.Unix(0, at).UTC()},
		"record_v1": &recordCmd{At: at, Assignment: Assignment{RequestID: "r1", MasterSAE: "m", SlaveSAE: "s",
			Slaves: []string{"s"}, Keys: []KeyRange{{KeyID: "k1", Offset: 0, Bits: 64}}, IssuedAt: time.Unix(0, at).UTC()}},
		"consume_v1":         consume,
		"burn_v1":            burn,
		"batch_v1":           &batchCmd{Cmds: [][]byte{mustEncode(cmdBurn, burn), mustEncode(cmdConsume, consume)}},
		"drop_last_block_v1": &dropCmd{At: at, Peer: "B", BlockID: "b1"},
		"pads_v1":            &padsCmd{At: at, Peer: "B", ReserveUpTo: 64, ReleaseBelow: 8},
		"plugin_v1": &pluginCmd{At: at, Install: &PluginModule{Name: "p", Step: "sift", Version: "1", ABI: 1,
			SHA256: hex.EncodeToString(wasmSum[:]), WASM: goldenBytes(8, 5)}},
		"cluster_version_v2": &clusterVersionCmd{At: at, Version: 2},
		"import_v2":          &importCmd{At: at, Conn: goldenConn.ID(), Block: "b2"},
		"reconcile_v3":       &reconcileCmd{At: at, Peer: "B", Conns: []PoolPosition{{Conn: goldenConn, Carve: 64, End: 128}}},
		"add_block_v4": &addRelayBlockCmd{addBlockCmd: addBlockCmd{At: at, ConnID: goldenConn.ID(), BlockID: "b3", LinkPeer: "B",
			AuthBytes: 8, AuthWrapped: goldenBytes(wrappedLen, 6), AuthSealed: goldenBytes(sealedLen(8), 7)},
			Relay: [2]relayPart{{Bytes: 32, Wrapped: goldenBytes(wrappedLen, 8), Sealed: goldenBytes(sealedLen(32), 9)},
				{Bytes: 32, Wrapped: goldenBytes(wrappedLen, 10), Sealed: goldenBytes(sealedLen(32), 11)}}},
		"relay_v4":     &relayCmd{At: at, Op: "send", Peer: "B", Dir: 1, Block: "r1", From: 0, To: 16},
		"relay_end_v4": &relayEndCmd{At: at, Op: "burn", Conn: goldenConn.ID(), Block: "r9"},
	}
}

func mustEncode(t cmdType, body any) []byte {
	b, err := encodeCmd(t, body)
	if err != nil {
		panic(err)
	}
	return b
}

func encodeGolden(e *cmdEntry, body any) ([]byte, error) {
	if b, ok := body.(*batchCmd); ok {
		return encodeBatch(b.Cmds), nil
	}
	return encodeEntry(e, body)
}

func readOrUpdate(t *testing.T, path string, want []byte) []byte {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./raftstore -run TestGolden -update for a new entry)", err)
	}
	return got
}

// TestGoldenEntries: every registry entry has a golden file; today's code
// decodes it to the sample body and re-encodes the same bytes.
func TestGoldenEntries(t *testing.T) {
	bodies := goldenBodies()
	for _, e := range registry.all {
		name := fmt.Sprintf("%s_v%d", e.name, e.version)
		t.Run(name, func(t *testing.T) {
			sample, ok := bodies[name]
			if !ok {
				t.Fatalf("no golden sample body for registry entry %s: add one to goldenBodies", name)
			}
			enc, err := encodeGolden(e, sample)
			if err != nil {
				t.Fatal(err)
			}
			data := readOrUpdate(t, filepath.Join("testdata", "cmd_"+name+".bin"), enc)
			de, body, err := decodeCmdMax(data, MaxVersion)
			if err != nil {
				t.Fatalf("decode golden entry: %v", err)
			}
			if de != e {
				t.Fatalf("golden entry decodes as %s v%d", de.name, de.version)
			}
			if !reflect.DeepEqual(body, sample) {
				t.Fatalf("golden entry decodes to\n%+v\nwant\n%+v", body, sample)
			}
			again, err := encodeGolden(e, body)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, data) {
				t.Fatalf("re-encoding differs:\n got %q\nwant %q", again, data)
			}
		})
	}
}

// goldenState applies a fixed history: a connection with blocks, issued,
// recorded and consumed keys, a link; at cluster version 2 also the raise
// and a half-done import.
func goldenState(t *testing.T, version uint8) *fsm {
	t.Helper()
	b := goldenBodies()
	f := newFSM()
	idx := uint64(0)
	apply := func(typ cmdType, body any) {
		t.Helper()
		idx++
		r, ok := f.Apply(&raft.Log{Index: idx, Data: mustEncode(typ, body)}).(result)
		if !ok || r.err != nil {
			t.Fatalf("golden history %s: %v", typ, r.err)
		}
	}
	apply(cmdRegister, b["register_v1"])
	apply(cmdAddBlock, b["add_block_v1"])
	apply(cmdIssue, b["issue_v1"])
	apply(cmdPads, b["pads_v1"])
	apply(cmdPlugin, b["plugin_v1"])
	if version >= 2 {
		apply(cmdClusterVersion, b["cluster_version_v2"])
		apply(cmdImport, b["import_v2"])
	}
	if version >= 3 {
		apply(cmdClusterVersion, &clusterVersionCmd{At: b["import_v2"].(*importCmd).At, Version: 3})
		apply(cmdReconcile, b["reconcile_v3"]) // a no-op: the site was not restored
		f.st.restored = []string{"C"}          // as Restore leaves it
	}
	if version >= 4 {
		apply(cmdClusterVersion, &clusterVersionCmd{At: b["import_v2"].(*importCmd).At, Version: 4})
		apply(cmdAddBlock, b["add_block_v4"])
		apply(cmdRelay, b["relay_v4"])
		apply(cmdRelayEnd, b["relay_end_v4"])
	}
	return f
}

// TestGoldenSnapshots: each cluster version's snapshot restores with
// today's code, at that version, and is written again byte for byte.
func TestGoldenSnapshots(t *testing.T) {
	for v := uint8(1); v <= MaxVersion; v++ {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			var enc []byte
			if *update {
				snap, err := goldenState(t, v).Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				sink := &memSink{}
				if err := snap.Persist(sink); err != nil {
					t.Fatal(err)
				}
				enc = sink.Bytes()
			}
			data := readOrUpdate(t, filepath.Join("testdata", fmt.Sprintf("snapshot_v%d.json", v)), enc)
			f := newFSM()
			if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
				t.Fatalf("restore golden snapshot: %v", err)
			}
			if got := f.clusterVersion(); got != v {
				t.Fatalf("cluster version %d, want %d", got, v)
			}
			st, err := f.connection(goldenConn.ID())
			if err != nil || st.IssuedKeys != 2 || st.AddedBlocks != 1 {
				t.Fatalf("restored connection %+v, %v", st, err)
			}
			if want := map[uint8]string{1: "", 2: "b2", 3: "b2", 4: "b2"}[v]; st.PendingImport != want {
				t.Fatalf("pending import %q, want %q", st.PendingImport, want)
			}
			snap, err := f.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			sink := &memSink{}
			if err := snap.Persist(sink); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(sink.Bytes(), data) {
				t.Fatal("snapshot written again differs from the golden file")
			}
			// An older binary refuses a newer snapshot loudly.
			if v > 1 {
				old := newFSMMax(v-1, f.log)
				if err := old.Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
					t.Fatalf("a binary of cluster version %d restored a v%d snapshot", v-1, v)
				}
			}
		})
	}
}
