package raftstore

// FSM snapshot, restore and digest: the canonical sorted form of the state.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/hashicorp/raft"
)

type snapBlock struct {
	ID      string `json:"id"`
	Start   int64  `json:"start"`
	Bytes   int    `json:"bytes"`
	Wrapped []byte `json:"wrapped"`
	Sealed  []byte `json:"sealed"`
}

type snapConn struct {
	Conn       Connection  `json:"conn"`
	End        int64       `json:"end"`
	Carve      int64       `json:"carve"`
	Live       int64       `json:"live"`
	Burned     int64       `json:"burned"`
	Erased     int64       `json:"erased"`
	Added      int64       `json:"added"`
	BurnedBits int64       `json:"burned_bits"`
	Blocks     []snapBlock `json:"blocks"`
	Recent     []string    `json:"recent"`
	Holes      []snapHole  `json:"holes"`
	Importing  string      `json:"importing,omitempty"` // cluster version 2
	// RelayPending is the relay block on its way from here (version 4).
	RelayPending *snapPending `json:"relay_pending,omitempty"`
	Relay        *RelayCounts `json:"relay,omitempty"`
}

type snapHole struct {
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	At    int64 `json:"at"`
}

type snapKey struct {
	ID        string   `json:"id"`
	Conn      string   `json:"conn"`
	Role      uint8    `json:"role"`
	Master    string   `json:"master"`
	Named     []string `json:"named"`
	Pending   []string `json:"pending"`
	Offset    int64    `json:"offset"`
	Bits      int      `json:"bits"`
	IssuedAt  int64    `json:"issued_at"`
	RequestID string   `json:"request_id"`
	State     keyState `json:"state"`
}

type snapReq struct {
	Key    string   `json:"key"`
	At     int64    `json:"at"`
	Code   int      `json:"code"`
	Caller string   `json:"caller"`
	KeyIDs []string `json:"key_ids"`
}

type snapState struct {
	Version int         `json:"version"` // the cluster version (docs/RAFT-FORMAT.md "Snapshot")
	Index   uint64      `json:"index"`   // last command index applied
	Now     int64       `json:"now"`
	Conns   []snapConn  `json:"conns"`
	Keys    []snapKey   `json:"keys"`
	Reqs    []snapReq   `json:"reqs"`
	Links   []snapLink  `json:"links"`
	Plugins snapPlugins `json:"plugins"`
	// Restored: peer KMEs not reconciled yet since the site was seeded
	// from a backup (cluster version 3, backup.go).
	Restored []string `json:"restored,omitempty"`
}

// export copies the state into its canonical, sorted form. Byte slices are
// shared: they are never mutated after creation.
func (st *fsmState) export() *snapState {
	s := &snapState{Version: int(st.clusterVersion()), Now: st.now}
	for _, cs := range st.conns {
		sc := snapConn{Conn: cs.conn, End: cs.end, Carve: cs.carve, Live: cs.live, Burned: cs.burned,
			Erased: cs.erased, Added: cs.added, BurnedBits: cs.burnedBits, Recent: slices.Clone(cs.recent), Importing: cs.importing,
			RelayPending: cs.pending.export()}
		if cs.relay != (RelayCounts{}) {
			rc := cs.relay
			sc.Relay = &rc
		}
		for _, h := range cs.holes {
			sc.Holes = append(sc.Holes, snapHole{Start: h.start, End: h.end, At: h.at})
		}
		for _, b := range cs.blocks {
			sc.Blocks = append(sc.Blocks, snapBlock{ID: b.id, Start: b.start, Bytes: b.bytes, Wrapped: b.wrapped, Sealed: b.sealed})
		}
		s.Conns = append(s.Conns, sc)
	}
	sort.Slice(s.Conns, func(i, j int) bool { return s.Conns[i].Conn.ID() < s.Conns[j].Conn.ID() })
	s.Keys = make([]snapKey, 0, len(st.keys))
	for _, k := range st.keys {
		s.Keys = append(s.Keys, snapKey{ID: k.id, Conn: k.conn, Role: k.role, Master: k.master, Named: k.named,
			Pending: k.pending, Offset: k.off, Bits: k.bits, IssuedAt: k.issuedAt, RequestID: k.requestID, State: k.state})
	}
	sort.Slice(s.Keys, func(i, j int) bool { return s.Keys[i].ID < s.Keys[j].ID })
	s.Links = st.exportLinks()
	s.Plugins = st.exportPlugins()
	s.Restored = slices.Clone(st.restored)
	s.Reqs = make([]snapReq, 0, len(st.order))
	for _, e := range st.order {
		s.Reqs = append(s.Reqs, snapReq{Key: e.key, At: e.at, Code: e.code, Caller: e.caller, KeyIDs: e.keyIDs})
	}
	return s
}

// importState builds a fresh state from a snapshot, recomputing derived
// fields (block refs, key pins).
func importState(s *snapState, maxVersion uint8) (*fsmState, error) {
	if s.Version < 1 || s.Version > int(maxVersion) {
		return nil, fmt.Errorf("%w: snapshot version %d, this binary supports 1..%d", ErrUpgradeRequired, s.Version, maxVersion)
	}
	st := newState()
	st.now = s.Now
	st.version = uint8(s.Version)
	for _, sc := range s.Conns {
		cs := &connState{conn: sc.Conn, end: sc.End, carve: sc.Carve, live: sc.Live, burned: sc.Burned,
			erased: sc.Erased, added: sc.Added, burnedBits: sc.BurnedBits, recent: sc.Recent, importing: sc.Importing}
		var err error
		if cs.pending, err = importPending(sc.RelayPending); err != nil {
			return nil, err
		}
		if sc.Relay != nil {
			cs.relay = *sc.Relay
		}
		if (cs.pending != nil || sc.Relay != nil) && s.Version < 4 {
			return nil, fmt.Errorf("raftstore: snapshot version %d with a pending relay block", s.Version)
		}
		for _, h := range sc.Holes {
			cs.holes = append(cs.holes, hole{start: h.Start, end: h.End, at: h.At})
		}
		for _, b := range sc.Blocks {
			if len(b.Sealed) != sealedLen(b.Bytes) {
				return nil, fmt.Errorf("raftstore: snapshot block %s malformed", b.ID)
			}
			cs.blocks = append(cs.blocks, &blockRec{id: b.ID, start: b.Start, bytes: b.Bytes, wrapped: b.Wrapped, sealed: b.Sealed})
		}
		st.conns[sc.Conn.ID()] = cs
	}
	for _, sk := range s.Keys {
		if _, ok := st.conns[sk.Conn]; !ok {
			return nil, fmt.Errorf("raftstore: snapshot key %s names unknown connection", sk.ID)
		}
		k := &keyRec{id: sk.ID, conn: sk.Conn, role: sk.Role, master: sk.Master, named: sk.Named, pending: sk.Pending,
			off: sk.Offset, bits: sk.Bits, issuedAt: sk.IssuedAt, requestID: sk.RequestID, state: sk.State}
		st.keys[k.id] = k
		st.acquire(k)
	}
	if err := st.importLinks(s.Links); err != nil {
		return nil, err
	}
	for _, ls := range st.links {
		if (ls.relay != [2]*relayState{} || ls.lastRelay != [2]int{}) && s.Version < 4 {
			return nil, fmt.Errorf("raftstore: snapshot version %d with relay key", s.Version)
		}
	}
	st.importPlugins(s.Plugins)
	if len(s.Restored) > 0 && s.Version < 3 {
		return nil, fmt.Errorf("raftstore: snapshot version %d with a restored list", s.Version)
	}
	st.restored = slices.Clone(s.Restored)
	for _, sr := range s.Reqs {
		e := &reqEntry{key: sr.Key, at: sr.At, code: sr.Code, caller: sr.Caller, keyIDs: sr.KeyIDs}
		st.reqs[e.key] = e
		st.order = append(st.order, e)
		for _, id := range e.keyIDs {
			if k, ok := st.keys[id]; ok {
				k.pins++
			}
		}
	}
	return st, nil
}

type fsmSnapshot struct{ s *snapState }

// Snapshot refuses while the FSM is stopped at an entry it cannot apply:
// the log must keep that entry for the upgraded binary to replay it.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.broken != nil {
		return nil, f.broken
	}
	s := f.st.export()
	s.Index = f.index
	return &fsmSnapshot{s: s}, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.s); err != nil {
		sink.Cancel()
		return fmt.Errorf("raftstore: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	dec := json.NewDecoder(rc)
	dec.DisallowUnknownFields()
	var s snapState
	if err := dec.Decode(&s); err != nil {
		return fmt.Errorf("raftstore: restore: %w", err)
	}
	st, err := importState(&s, f.maxVersion)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.st = st
	f.index = s.Index
	f.broken = nil // the leader's state at s.Index replaces what this node could not apply
	f.restores++
	f.mu.Unlock()
	return nil
}

// digest hashes the canonical encoding of the state.
func (f *fsm) digest() (uint64, string) {
	f.mu.RLock()
	s := f.st.export()
	idx := f.index
	f.mu.RUnlock()
	h := sha256.New()
	var buf bytes.Buffer
	_ = json.NewEncoder(&buf).Encode(s)
	h.Write(buf.Bytes())
	return idx, hex.EncodeToString(h.Sum(nil))
}
