package raftstore

// Encryption at rest and crypto-shredding.
//
// Layer 1 (site-wide, inside Raft): every block is sealed with a fresh
// AES-256-GCM data key before it enters a Raft command; the data key is
// wrapped by the site KEK (AAD: connection ID + block ID). Raft entries, the
// FSM state and its snapshots hold only ciphertext. This alone gives I5 (no
// plaintext at rest) but not erasure: with a static KEK, an AddBlock entry
// left in a free bbolt page stays decryptable forever.
//
// Layer 2 (per node, below Raft): the node's keyring, a small file of
// fixed-size slots, each holding one 256-bit key wrapped by the KEK.
//   - Log epochs: every Raft log entry's payload is sealed (AES-256-GCM, AAD
//     index+term+type) under the current log-epoch key before raft-boltdb
//     sees it. Each completed snapshot starts a new epoch. Epochs are
//     non-decreasing along the log, so after raft compacts the log (deletes a
//     prefix) every epoch older than the first remaining entry's epoch has no
//     entry left, and its key slot is overwritten with zeros in place and
//     fsynced. Freed bbolt pages still holding those entries are then
//     undecryptable.
//   - Snapshot keys: each snapshot file is sealed in 64 KiB chunks under its
//     own key; when the file snapshot store reaps a snapshot (or a snapshot is
//     cancelled), its key slot is zeroed.
//
// Guarantee (against an attacker who later obtains the KEK and a copy of the
// data directory, including freed bbolt pages and deleted snapshot files):
// the bits of a block are recoverable only while
//   (a) the block is still in the FSM state. A block leaves the state once
//       the carve position passed its end, every key carved from it is
//       erased or burned and out of the request-retry window (2 minutes of
//       leader time or the last 100,000 requests, whichever ends first), and
//       (slave site) no unfilled hole reserved for a late relay overlaps it
//       (holes are burned after the same 2 minutes); or
//   (b) a Raft log entry or a snapshot holding it is still sealed under a
//       key present in the keyring. After the block left the state, the next
//       snapshot rotates the log epoch; once raft compacts the log past the
//       last entry of the old epoch (TrailingLogs entries later, at the next
//       snapshot) the epoch key is zeroed; snapshots older than the
//       snapRetain newest are reaped and their keys zeroed. In practice: two
//       snapshots after the block died, nothing on disk can decrypt it.
// Erasure granularity is the block: an erased key inside a block that still
// holds live keys stays sealed in the state until the whole block dies.
// Plaintext key bits exist only in memory (the leader's Apply result and the
// caller's buffers); they are never logged.
// Key destruction overwrites the slot in place and fsyncs. On copy-on-write
// file systems or flash that remaps writes, old slot bytes may survive
// physically, so there the guarantee degrades to "not reachable through the
// file system"; put the data directory on a file system that overwrites in
// place (ext4, xfs) for the full guarantee.

import (
	"bufio"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

const (
	slotSize    = 160
	slotNameMax = 64
	kindLog     = 1
	kindSnap    = 2
)

type ringKey struct {
	slot  int
	kind  byte
	epoch uint64
	name  string
	aead  cipher.AEAD
}

// keyring is the node's file of wrapped epoch and snapshot keys.
type keyring struct {
	mu   sync.Mutex
	f    *os.File
	kek  cipher.AEAD
	keys []*ringKey
	used []bool // by slot
}

func slotAAD(kind byte, epoch uint64, name string) []byte {
	b := []byte("qkdkms/keyring/v1")
	b = append(b, kind)
	b = binary.BigEndian.AppendUint64(b, epoch)
	return appendLP(b, name)
}

func openKeyring(path string, kek []byte) (*keyring, error) {
	kg, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("raftstore: keyring: %w", err)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if len(raw)%slotSize != 0 {
		f.Close()
		return nil, fmt.Errorf("raftstore: keyring %s: size %d not a multiple of %d", path, len(raw), slotSize)
	}
	kr := &keyring{f: f, kek: kg, used: make([]bool, len(raw)/slotSize)}
	for i := range kr.used {
		s := raw[i*slotSize : (i+1)*slotSize]
		if s[0] == 0 {
			continue
		}
		kind, epoch := s[1], binary.BigEndian.Uint64(s[2:10])
		nl := int(s[10])
		if nl > slotNameMax {
			f.Close()
			return nil, fmt.Errorf("raftstore: keyring slot %d corrupt", i)
		}
		name := string(s[11 : 11+nl])
		w := s[11+slotNameMax : 11+slotNameMax+wrappedLen]
		k, err := kg.Open(nil, w[:12], w[12:], slotAAD(kind, epoch, name))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("raftstore: keyring slot %d: cannot unwrap (wrong KEK?): %w", i, err)
		}
		a, err := newGCM(k)
		clear(k)
		if err != nil {
			f.Close()
			return nil, err
		}
		kr.used[i] = true
		kr.keys = append(kr.keys, &ringKey{slot: i, kind: kind, epoch: epoch, name: name, aead: a})
	}
	return kr, nil
}

func (kr *keyring) add(kind byte, epoch uint64, name string) (*ringKey, error) {
	if len(name) > slotNameMax {
		return nil, fmt.Errorf("raftstore: keyring name too long: %q", name)
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	defer clear(k)
	a, err := newGCM(k)
	if err != nil {
		return nil, err
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	slot := slices.Index(kr.used, false)
	if slot < 0 {
		slot = len(kr.used)
		kr.used = append(kr.used, false)
	}
	buf := make([]byte, slotSize)
	buf[0], buf[1] = 1, kind
	binary.BigEndian.PutUint64(buf[2:10], epoch)
	buf[10] = byte(len(name))
	copy(buf[11:], name)
	nonce := make([]byte, 12)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	copy(buf[11+slotNameMax:], kr.kek.Seal(nonce, nonce, k, slotAAD(kind, epoch, name)))
	if _, err := kr.f.WriteAt(buf, int64(slot)*slotSize); err != nil {
		return nil, fmt.Errorf("raftstore: keyring write: %w", err)
	}
	if err := kr.f.Sync(); err != nil {
		return nil, fmt.Errorf("raftstore: keyring sync: %w", err)
	}
	kr.used[slot] = true
	rk := &ringKey{slot: slot, kind: kind, epoch: epoch, name: name, aead: a}
	kr.keys = append(kr.keys, rk)
	return rk, nil
}

// destroy overwrites the key's slot with zeros in place and fsyncs.
func (kr *keyring) destroy(rk *ringKey) error {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	i := slices.Index(kr.keys, rk)
	if i < 0 {
		return nil
	}
	if _, err := kr.f.WriteAt(make([]byte, slotSize), int64(rk.slot)*slotSize); err != nil {
		return fmt.Errorf("raftstore: keyring erase: %w", err)
	}
	if err := kr.f.Sync(); err != nil {
		return fmt.Errorf("raftstore: keyring sync: %w", err)
	}
	kr.used[rk.slot] = false
	kr.keys = slices.Delete(kr.keys, i, i+1)
	return nil
}

func (kr *keyring) find(kind byte, epoch uint64, name string) *ringKey {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	for _, k := range kr.keys {
		if k.kind == kind && k.epoch == epoch && k.name == name {
			return k
		}
	}
	return nil
}

func (kr *keyring) list(kind byte) []*ringKey {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	var out []*ringKey
	for _, k := range kr.keys {
		if k.kind == kind {
			out = append(out, k)
		}
	}
	return out
}

func (kr *keyring) close() error { return kr.f.Close() }

// ---- encrypted log store ----

const logMagic = 0xE5

// Test hooks: see every sealed log entry / snapshot record as it is written.
var (
	testHookSealedLog  func(l *raft.Log)
	testHookSnapRecord func(id string, n uint64, last bool, ct []byte)
)

// encLogStore seals every entry's payload under the current log epoch.
type encLogStore struct {
	inner  raft.LogStore
	kr     *keyring
	mu     sync.RWMutex
	cur    *ringKey
	writes atomic.Uint64 // StoreLogs calls (one bbolt commit, one fsync pair each)
}

func newEncLogStore(inner raft.LogStore, kr *keyring) (*encLogStore, error) {
	s := &encLogStore{inner: inner, kr: kr}
	for _, k := range kr.list(kindLog) {
		if s.cur == nil || k.epoch > s.cur.epoch {
			s.cur = k
		}
	}
	if s.cur == nil {
		k, err := kr.add(kindLog, 1, "")
		if err != nil {
			return nil, err
		}
		s.cur = k
	}
	return s, s.gc()
}

func logAAD(l *raft.Log) []byte {
	b := []byte("qkdkms/log/v1")
	b = binary.BigEndian.AppendUint64(b, l.Index)
	b = binary.BigEndian.AppendUint64(b, l.Term)
	return append(b, byte(l.Type))
}

func (s *encLogStore) seal(l *raft.Log) (*raft.Log, error) {
	s.mu.RLock()
	k := s.cur
	s.mu.RUnlock()
	out := *l
	buf := make([]byte, 1+8+12, 1+8+12+len(l.Data)+gcmOverhead)
	buf[0] = logMagic
	binary.BigEndian.PutUint64(buf[1:9], k.epoch)
	if _, err := rand.Read(buf[9:21]); err != nil {
		return nil, err
	}
	out.Data = k.aead.Seal(buf, buf[9:21], l.Data, logAAD(l))
	if testHookSealedLog != nil {
		testHookSealedLog(&out)
	}
	return &out, nil
}

func (s *encLogStore) open(l *raft.Log) error {
	d := l.Data
	if len(d) < 1+8+12+gcmOverhead || d[0] != logMagic {
		return fmt.Errorf("raftstore: log %d: not an encrypted entry", l.Index)
	}
	epoch := binary.BigEndian.Uint64(d[1:9])
	k := s.kr.find(kindLog, epoch, "")
	if k == nil {
		return fmt.Errorf("raftstore: log %d: epoch %d key destroyed", l.Index, epoch)
	}
	pt, err := k.aead.Open(nil, d[9:21], d[21:], logAAD(l))
	if err != nil {
		return fmt.Errorf("raftstore: log %d: %w", l.Index, err)
	}
	l.Data = pt
	return nil
}

func (s *encLogStore) FirstIndex() (uint64, error) { return s.inner.FirstIndex() }
func (s *encLogStore) LastIndex() (uint64, error)  { return s.inner.LastIndex() }

func (s *encLogStore) GetLog(index uint64, log *raft.Log) error {
	if err := s.inner.GetLog(index, log); err != nil {
		return err
	}
	return s.open(log)
}

func (s *encLogStore) StoreLog(log *raft.Log) error { return s.StoreLogs([]*raft.Log{log}) }

func (s *encLogStore) StoreLogs(logs []*raft.Log) error {
	sealed := make([]*raft.Log, len(logs))
	for i, l := range logs {
		var err error
		if sealed[i], err = s.seal(l); err != nil {
			return err
		}
	}
	s.writes.Add(1)
	return s.inner.StoreLogs(sealed)
}

func (s *encLogStore) DeleteRange(min, max uint64) error {
	if err := s.inner.DeleteRange(min, max); err != nil {
		return err
	}
	return s.gc()
}

// rotate starts a new log epoch (called after each completed snapshot).
func (s *encLogStore) rotate() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.kr.add(kindLog, s.cur.epoch+1, "")
	if err != nil {
		return err
	}
	s.cur = k
	return nil
}

// gc destroys every log-epoch key older than the first remaining entry's.
func (s *encLogStore) gc() error {
	first, err := s.inner.FirstIndex()
	if err != nil {
		return err
	}
	s.mu.RLock()
	keep := s.cur.epoch
	s.mu.RUnlock()
	if first != 0 {
		var l raft.Log
		if err := s.inner.GetLog(first, &l); err != nil {
			return fmt.Errorf("raftstore: epoch gc: %w", err)
		}
		if len(l.Data) >= 9 && l.Data[0] == logMagic {
			keep = min(keep, binary.BigEndian.Uint64(l.Data[1:9]))
		}
	}
	for _, k := range s.kr.list(kindLog) {
		if k.epoch < keep {
			if err := s.kr.destroy(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- encrypted snapshot store ----

const snapChunk = 64 << 10
const snapRecOverhead = 4 + gcmOverhead
const lastFlag = 1 << 31

type encSnapStore struct {
	inner     raft.SnapshotStore
	kr        *keyring
	onPersist func() // after a snapshot is durably written
	mu        sync.Mutex
	pending   map[string]bool
}

func newEncSnapStore(inner raft.SnapshotStore, kr *keyring, onPersist func()) (*encSnapStore, error) {
	s := &encSnapStore{inner: inner, kr: kr, onPersist: onPersist, pending: map[string]bool{}}
	return s, s.reap()
}

// reap destroys keys of snapshots no longer in the store.
func (s *encSnapStore) reap() error {
	metas, err := s.inner.List()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.kr.list(kindSnap) {
		if s.pending[k.name] || slices.ContainsFunc(metas, func(m *raft.SnapshotMeta) bool { return m.ID == k.name }) {
			continue
		}
		if err := s.kr.destroy(k); err != nil {
			return err
		}
	}
	return nil
}

func snapAAD(id string, n uint64, last bool) []byte {
	b := appendLP([]byte("qkdkms/snap/v1"), id)
	b = binary.BigEndian.AppendUint64(b, n)
	if last {
		return append(b, 1)
	}
	return append(b, 0)
}

func snapNonce(n uint64) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b[4:], n)
	return b
}

// plainSize converts a sealed snapshot's size to its plaintext size.
func plainSize(ct int64) int64 {
	k := (ct + snapChunk + snapRecOverhead - 1) / (snapChunk + snapRecOverhead)
	return max(0, ct-k*snapRecOverhead)
}

func (s *encSnapStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.inner.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.pending[sink.ID()] = true
	s.mu.Unlock()
	k, err := s.kr.add(kindSnap, 0, sink.ID())
	if err != nil {
		sink.Cancel()
		s.done(sink.ID())
		return nil, err
	}
	return &encSink{store: s, inner: sink, key: k, w: bufio.NewWriterSize(sink, snapChunk+snapRecOverhead)}, nil
}

func (s *encSnapStore) done(id string) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

func (s *encSnapStore) List() ([]*raft.SnapshotMeta, error) {
	metas, err := s.inner.List()
	if err != nil {
		return nil, err
	}
	out := make([]*raft.SnapshotMeta, len(metas))
	for i, m := range metas {
		c := *m
		c.Size = plainSize(m.Size)
		out[i] = &c
	}
	return out, nil
}

func (s *encSnapStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	k := s.kr.find(kindSnap, 0, id)
	if k == nil {
		return nil, nil, fmt.Errorf("raftstore: snapshot %s: key destroyed or missing", id)
	}
	meta, rc, err := s.inner.Open(id)
	if err != nil {
		return nil, nil, err
	}
	c := *meta
	c.Size = plainSize(meta.Size)
	return &c, &encReader{rc: rc, r: bufio.NewReaderSize(rc, snapChunk+snapRecOverhead), key: k, id: id}, nil
}

type encSink struct {
	store  *encSnapStore
	inner  raft.SnapshotSink
	key    *ringKey
	w      *bufio.Writer
	buf    []byte
	n      uint64
	err    error
	closed bool
}

func (e *encSink) ID() string { return e.inner.ID() }

func (e *encSink) emit(p []byte, last bool) error {
	l := uint32(len(p))
	if last {
		l |= lastFlag
	}
	hdr := binary.BigEndian.AppendUint32(nil, l)
	if _, err := e.w.Write(hdr); err != nil {
		return err
	}
	ct := e.key.aead.Seal(nil, snapNonce(e.n), p, snapAAD(e.inner.ID(), e.n, last))
	if testHookSnapRecord != nil {
		testHookSnapRecord(e.inner.ID(), e.n, last, ct)
	}
	e.n++
	_, err := e.w.Write(ct)
	return err
}

func (e *encSink) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	e.buf = append(e.buf, p...)
	for len(e.buf) > snapChunk {
		if err := e.emit(e.buf[:snapChunk], false); err != nil {
			e.err = err
			return 0, err
		}
		e.buf = append(e.buf[:0], e.buf[snapChunk:]...)
	}
	return len(p), nil
}

// Close seals the last record and closes the file; idempotent (raft closes
// the sink again after FSMSnapshot.Persist did).
func (e *encSink) Close() error {
	if e.closed {
		return nil
	}
	e.closed = true
	defer e.store.done(e.inner.ID())
	if e.err == nil {
		e.err = e.emit(e.buf, true)
	}
	if e.err == nil {
		e.err = e.w.Flush()
	}
	clear(e.buf)
	if e.err != nil {
		e.inner.Cancel()
		e.store.kr.destroy(e.key)
		return e.err
	}
	if err := e.inner.Close(); err != nil {
		e.store.kr.destroy(e.key)
		return err
	}
	if e.store.onPersist != nil {
		e.store.onPersist()
	}
	return e.store.reap()
}

func (e *encSink) Cancel() error {
	if e.closed {
		return nil
	}
	e.closed = true
	defer e.store.done(e.inner.ID())
	clear(e.buf)
	err := e.inner.Cancel()
	return errors.Join(err, e.store.kr.destroy(e.key))
}

type encReader struct {
	rc   io.ReadCloser
	r    *bufio.Reader
	key  *ringKey
	id   string
	n    uint64
	buf  []byte
	last bool
}

func (d *encReader) Read(p []byte) (int, error) {
	for len(d.buf) == 0 {
		if d.last {
			return 0, io.EOF
		}
		var hdr [4]byte
		if _, err := io.ReadFull(d.r, hdr[:]); err != nil {
			return 0, fmt.Errorf("raftstore: snapshot %s truncated: %w", d.id, err)
		}
		l := binary.BigEndian.Uint32(hdr[:])
		d.last = l&lastFlag != 0
		l &^= lastFlag
		if l > snapChunk {
			return 0, fmt.Errorf("raftstore: snapshot %s corrupt record", d.id)
		}
		ct := make([]byte, int(l)+gcmOverhead)
		if _, err := io.ReadFull(d.r, ct); err != nil {
			return 0, fmt.Errorf("raftstore: snapshot %s truncated: %w", d.id, err)
		}
		pt, err := d.key.aead.Open(ct[:0], snapNonce(d.n), ct, snapAAD(d.id, d.n, d.last))
		if err != nil {
			return 0, fmt.Errorf("raftstore: snapshot %s: %w", d.id, err)
		}
		d.n++
		d.buf = pt
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}

func (d *encReader) Close() error { return d.rc.Close() }
