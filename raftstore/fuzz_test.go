package raftstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
)

// Fuzz targets of the Raft formats (issue 13 item 10): every byte string a
// log entry or a snapshot may hold reaches these decoders on a follower.
// Seeds are the golden files (docs/RAFT-FORMAT.md "Golden files"), so the
// fuzzer starts from every registered command and both snapshot versions.
// make fuzz runs each with an execution budget.

// quietFSM is a fresh FSM whose "cannot apply" log goes nowhere: the
// fuzzer breaks it on purpose thousands of times.
func quietFSM() *fsm {
	return newFSMMax(MaxVersion, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func goldenSeeds(f *testing.F, pattern string) [][]byte {
	f.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", pattern))
	if err != nil || len(files) == 0 {
		f.Fatalf("no golden files %s: %v", pattern, err)
	}
	var out [][]byte
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzDecodeCommand: a log entry's bytes decode through the registry
// without panicking; what decodes re-encodes to bytes that decode to a
// body which re-encodes to the same bytes (encoding loses nothing but the
// difference between an absent and an empty byte field, which no command
// tells apart); and applying the entry to a state
// built from the golden history errors or succeeds, never panics, and a
// failed command leaves the state as it was (I6).
func FuzzDecodeCommand(f *testing.F) {
	for _, b := range goldenSeeds(f, "cmd_*.bin") {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{byte(cmdRegister)})
	f.Add([]byte{byte(cmdRegister), 9, '{', '}'})
	// An empty omitempty byte field: decodes to []byte{}, re-encodes
	// without the field, decodes to nil (CI found it on stop 16).
	f.Add(append([]byte{byte(cmdAddBlock), 4}, `{"auth_wrapped":""}`...))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, body, err := decodeCmdMax(data, MaxVersion)
		if err != nil {
			if !errors.Is(err, errUndecodable) {
				t.Fatalf("decode error %v is not errUndecodable", err)
			}
			return
		}
		again, err := encodeGolden(e, body)
		if err != nil {
			t.Fatalf("re-encode %s: %v", e.name, err)
		}
		e2, body2, err := decodeCmdMax(again, MaxVersion)
		if err != nil || e2 != e {
			t.Fatalf("%s: decode(encode(x)) = %s, %v", e.name, e2.name, err)
		}
		if third, err := encodeGolden(e2, body2); err != nil || !bytes.Equal(third, again) {
			t.Fatalf("%s: encode(decode(encode(x))) = %q, %v; want %q", e.name, third, err, again)
		}

		fsm := goldenFuzzState(t)
		_, before := fsm.digest()
		r := fsm.Apply(&raft.Log{Index: 100, Data: data})
		failed := false
		switch r := r.(type) {
		case result:
			failed = r.err != nil
		case []result:
			// A batch: members apply one by one; only a batch whose every
			// member failed must leave the state unchanged.
			failed = true
			for _, m := range r {
				failed = failed && m.err != nil
			}
		default:
			t.Fatalf("Apply returned %T", r)
		}
		if failed && fsm.brokenErr() == nil {
			if _, after := fsm.digest(); after != before {
				t.Fatalf("%s failed and changed the state", e.name)
			}
		}
	})
}

// goldenFuzzState is the golden history at the highest cluster version.
func goldenFuzzState(t *testing.T) *fsm {
	g := goldenState(t, MaxVersion)
	f := quietFSM()
	f.st, f.index = g.st, g.index
	return f
}

// FuzzDecodeBatch: a batch body (after the type and version bytes)
// decodes or errors without panicking, allocates no more members than it
// has bytes, and what decodes re-encodes to a body that decodes to the
// same members.
func FuzzDecodeBatch(f *testing.F) {
	for _, b := range goldenSeeds(f, "cmd_batch_v*.bin") {
		f.Add(b[2:])
	}
	burn := mustEncode(cmdBurn, &burnCmd{At: 1, KeyIDs: []string{"k"}})
	f.Add(encodeBatch([][]byte{burn})[2:])
	f.Add(encodeBatch([][]byte{burn, burn, burn})[2:])
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2})
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := decodeBatch(body)
		if err != nil {
			if !errors.Is(err, errUndecodable) {
				t.Fatalf("decode error %v is not errUndecodable", err)
			}
			return
		}
		if len(b.Cmds) == 0 || cap(b.Cmds) > len(body) {
			t.Fatalf("%d members (cap %d) from %d bytes", len(b.Cmds), cap(b.Cmds), len(body))
		}
		for i, c := range b.Cmds {
			if len(c) < 2 {
				t.Fatalf("member %d has %d bytes", i, len(c))
			}
		}
		enc := encodeBatch(b.Cmds)
		b2, err := decodeBatch(enc[2:])
		if err != nil || !reflect.DeepEqual(b.Cmds, b2.Cmds) {
			t.Fatalf("decode(encode(x)) = %v, %v; want %v", b2, err, b.Cmds)
		}
	})
}

// FuzzRestore: FSM.Restore of arbitrary bytes errors or succeeds, never
// panics; a restored state snapshots to bytes that restore to the same
// state (same digest), and a failed restore keeps the state it had.
func FuzzRestore(f *testing.F) {
	for _, b := range goldenSeeds(f, "snapshot_v*.json") {
		f.Add(b)
	}
	f.Add([]byte(`{"version":1,"index":0,"now":0,"conns":[],"keys":[],"reqs":[],"links":[],"plugins":{}}`))
	f.Add([]byte(`{"version":3}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := goldenFuzzState(t)
		_, before := fsm.digest()
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			if _, after := fsm.digest(); after != before {
				t.Fatalf("a failed restore (%v) changed the state", err)
			}
			return
		}
		_, want := fsm.digest()
		_ = fsm.stats()
		_ = fsm.connections()
		snap, err := fsm.Snapshot()
		if err != nil {
			t.Fatalf("snapshot of a restored state: %v", err)
		}
		sink := &memSink{}
		if err := snap.Persist(sink); err != nil {
			t.Fatalf("persist a restored state: %v", err)
		}
		again := quietFSM()
		if err := again.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
			t.Fatalf("a snapshot of a restored state does not restore: %v\n%s", err, sink.Bytes())
		}
		if _, got := again.digest(); got != want {
			t.Fatalf("restore(persist(x)) digest %s, want %s", got, want)
		}
	})
}

// FuzzRestoreFields: the golden v2 snapshot with its numbers replaced
// (block and key offsets and sizes, the carve and end positions, a hole):
// byte-level mutation rarely keeps the JSON valid, this keeps it valid
// and inconsistent. Restore errors or succeeds, never panics, and a
// restored state then serves reads and applies the golden commands
// (issue, consume, burn, delete) without panicking.
func FuzzRestoreFields(f *testing.F) {
	f.Add(int64(0), 16, int64(0), 64, int64(128), int64(128), int64(0), int64(0))
	f.Add(int64(-64), -16, int64(-1), -1, int64(-128), int64(1<<62), int64(5), int64(1))
	f.Add(int64(1<<62), 1<<30, int64(1<<62), 1<<31-1, int64(64), int64(0), int64(-10), int64(1<<62))
	data, err := os.ReadFile(filepath.Join("testdata", "snapshot_v2.json"))
	if err != nil {
		f.Fatal(err)
	}
	bodies := goldenBodies()
	f.Fuzz(func(t *testing.T, blockStart int64, blockBytes int, keyOff int64, keyBits int, carve, end, holeStart, holeEnd int64) {
		var s snapState
		if err := json.Unmarshal(data, &s); err != nil {
			t.Fatal(err)
		}
		c := &s.Conns[0]
		c.Blocks[0].Start, c.Blocks[0].Bytes = blockStart, blockBytes
		if n := sealedLen(blockBytes); n >= 0 && n <= 1<<16 {
			c.Blocks[0].Sealed = make([]byte, n) // keep the length check from hiding the rest
		}
		c.Carve, c.End = carve, end
		c.Holes = []snapHole{{Start: holeStart, End: holeEnd, At: s.Now}}
		s.Keys[1].Offset, s.Keys[1].Bits = keyOff, keyBits
		raw, err := json.Marshal(&s)
		if err != nil {
			t.Fatal(err)
		}
		fsm := quietFSM()
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(raw))); err != nil {
			return
		}
		_ = fsm.connections()
		_, _ = fsm.digest()
		at := s.Now + 1
		for i, c := range []struct {
			typ  cmdType
			body any
		}{
			{cmdIssue, &issueCmd{At: at, RequestID: "fz", MasterSAE: "m", SlaveSAE: "s", Slaves: []string{"s"}, Size: 64, KeyIDs: []string{"f1"}}},
			{cmdConsume, bodies["consume_v1"]},
			{cmdBurn, &burnCmd{At: at, KeyIDs: []string{"k1", "k2"}}},
			{cmdAddBlock, &addBlockCmd{At: at, ConnID: goldenConn.ID(), BlockID: "fz", Bytes: 8, Wrapped: make([]byte, wrappedLen), Sealed: make([]byte, sealedLen(8))}},
			{cmdDrop, &dropCmd{At: at, Peer: "B", BlockID: "b1"}},
			{cmdRegister, &registerCmd{At: at + int64(reqTableAge), Conn: goldenConn}}, // ages the request table and holes
			{cmdDelete, bodies["delete_v1"]},
		} {
			fsm.Apply(&raft.Log{Index: s.Index + 1 + uint64(i), Data: mustEncode(c.typ, c.body)})
		}
	})
}
