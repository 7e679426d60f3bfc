package raftstore

// Backup and restore of a site (docs/OPERATIONS.md "Backup and restore").
//
// A backup is the FSM state of the site's leader at a committed index, in
// the snapshot encoding (fsm_snapshot.go), sealed whole:
//
//	"QKDKMS-BACKUP/1\n"
//	uint32 big-endian length, then the header (BackupHeader, JSON)
//	12-byte nonce, then AES-256-GCM(backup key, state JSON, AAD = magic + length + header)
//
// The backup key is HKDF-SHA256 of the site KEK with the header's random
// salt and the info "qkdkms/backup/v1|" + KME ID, so the file opens only
// with the KEK of the site that wrote it, and the GCM tag covers header
// and body: a flipped bit anywhere is refused. Inside the sealed body the
// pool blocks and pad chunks are still sealed under their own data keys
// wrapped by the KEK (crypto.go), as in every snapshot, so no key bit is
// in the file in plaintext even before the outer layer.
//
// Restore seeds an empty data directory with the state as a Raft snapshot
// (index as in the backup, term 1, the new site's voters) under the node's
// own keyring; Raft restores it at start. The restored state lists every
// peer KME its connections or links name (fsmState.restored): until a
// reconcile command names a peer, every command that could hand out or
// record a key of a connection with that peer, or move its pool or link,
// fails with ErrNotReconciled (fsmState.gate). Reconciling burns every
// key issued before the backup and moves each pool past the position the
// peer site reports, so nothing the peer may have used is served again.

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

var (
	// ErrNotReconciled: the site was restored from a backup and has not
	// reconciled its pools with the peer site of this connection yet
	// (docs/OPERATIONS.md "Backup and restore"); nothing changed.
	ErrNotReconciled = errors.New("raftstore: site restored from a backup, not reconciled with the peer site")
	// ErrBadBackup: a backup file that is malformed, tampered with, of
	// another site or sealed under another KEK.
	ErrBadBackup = errors.New("raftstore: backup refused")
)

const (
	backupMagic = "QKDKMS-BACKUP/1\n"
	// BackupFormat is the version of the backup file format.
	BackupFormat = 1
	// MaxBackupBytes bounds a backup file read into memory.
	MaxBackupBytes = 1 << 30
)

// BackupHeader is the plaintext (but authenticated) head of a backup file.
type BackupHeader struct {
	Format         int       `json:"format"`
	KMEID          string    `json:"kme_id"`
	Index          uint64    `json:"index"` // last log index applied to the state
	Term           uint64    `json:"term"`  // the leader's term when it took the backup
	Time           time.Time `json:"time"`
	ClusterVersion int       `json:"cluster_version"`
	Digest         string    `json:"digest"` // Store.Digest of the state at Index
	Salt           []byte    `json:"salt"`   // HKDF salt of the backup key
}

// Backup is an opened, verified backup file.
type Backup struct {
	Header BackupHeader
	state  *snapState
}

func backupKey(kek, salt []byte, kmeID string) ([]byte, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("%w: KEK must be %d bytes", ErrBadKEK, KEKSize)
	}
	return hkdf.Key(sha256.New, kek, salt, "qkdkms/backup/v1|"+kmeID, 32)
}

func stateDigest(s *snapState) (string, error) {
	c := *s
	c.Index = 0 // the digest hashes the state, not its index (fsm.digest)
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(&c); err != nil {
		return "", err
	}
	sum := sha256.Sum256(buf.Bytes())
	return hex.EncodeToString(sum[:]), nil
}

// Backup writes a sealed backup of the site's committed state to w. It
// runs on the leader only (ErrNotLeader elsewhere), after a barrier and a
// leadership check, so the state holds everything committed before the
// call. kmeID is the site's KME ID, bound into the file.
func (s *Store) Backup(ctx context.Context, kmeID string, w io.Writer) (BackupHeader, error) {
	if kmeID == "" {
		return BackupHeader{}, fmt.Errorf("%w: backup needs the KME ID", ErrInvalid)
	}
	if err := s.readCheck(ctx); err != nil {
		return BackupHeader{}, err
	}
	s.fsm.mu.RLock()
	st := s.fsm.st.export()
	st.Index = s.fsm.index
	s.fsm.mu.RUnlock()
	term, _ := strconv.ParseUint(s.raft.Stats()["term"], 10, 64)
	h := BackupHeader{Format: BackupFormat, KMEID: kmeID, Index: st.Index, Term: term, Time: s.clock().UTC(),
		ClusterVersion: st.Version, Salt: make([]byte, 32)}
	var err error
	if h.Digest, err = stateDigest(st); err != nil {
		return BackupHeader{}, err
	}
	if _, err := rand.Read(h.Salt); err != nil {
		return BackupHeader{}, err
	}
	data, err := sealBackup(s.kek, h, st)
	if err != nil {
		return BackupHeader{}, err
	}
	if _, err := w.Write(data); err != nil {
		return BackupHeader{}, fmt.Errorf("raftstore: write backup: %w", err)
	}
	return h, nil
}

func sealBackup(kek []byte, h BackupHeader, st *snapState) ([]byte, error) {
	hb, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	var body bytes.Buffer
	if err := json.NewEncoder(&body).Encode(st); err != nil {
		return nil, err
	}
	key, err := backupKey(kek, h.Salt, h.KMEID)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	out := []byte(backupMagic)
	out = binary.BigEndian.AppendUint32(out, uint32(len(hb)))
	out = append(out, hb...)
	aad := slices.Clone(out)
	nonce := make([]byte, g.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return g.Seal(out, nonce, body.Bytes(), aad), nil
}

// OpenBackup reads and verifies a backup: the KME ID it was taken for must
// be kmeID, the KEK must open it (which also proves nothing in it was
// changed), the state must decode strictly, be of a version this binary
// supports, and hash to the header's digest.
func OpenBackup(r io.Reader, kek []byte, kmeID string) (*Backup, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxBackupBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read: %w", ErrBadBackup, err)
	}
	if len(data) > MaxBackupBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadBackup, MaxBackupBytes)
	}
	if !bytes.HasPrefix(data, []byte(backupMagic)) || len(data) < len(backupMagic)+4 {
		return nil, fmt.Errorf("%w: not a qkdkms backup file", ErrBadBackup)
	}
	rest := data[len(backupMagic):]
	hl := int(binary.BigEndian.Uint32(rest))
	if hl > len(rest)-4 || hl > 1<<16 {
		return nil, fmt.Errorf("%w: truncated header", ErrBadBackup)
	}
	var h BackupHeader
	dec := json.NewDecoder(bytes.NewReader(rest[4 : 4+hl]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrBadBackup, err)
	}
	if h.Format != BackupFormat {
		return nil, fmt.Errorf("%w: format %d, this binary reads %d", ErrBadBackup, h.Format, BackupFormat)
	}
	if h.KMEID != kmeID {
		return nil, fmt.Errorf("%w: the backup is of site %q, not %q", ErrBadBackup, h.KMEID, kmeID)
	}
	key, err := backupKey(kek, h.Salt, h.KMEID)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	aadLen := len(backupMagic) + 4 + hl
	sealed := data[aadLen:]
	if len(sealed) < g.NonceSize()+g.Overhead() {
		return nil, fmt.Errorf("%w: truncated body", ErrBadBackup)
	}
	body, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], data[:aadLen])
	if err != nil {
		return nil, fmt.Errorf("%w: cannot open it (another site's KEK, or the file was changed): %w", ErrBadBackup, err)
	}
	var st snapState
	sd := json.NewDecoder(bytes.NewReader(body))
	sd.DisallowUnknownFields()
	if err := sd.Decode(&st); err != nil {
		return nil, fmt.Errorf("%w: state: %w", ErrBadBackup, err)
	}
	if _, err := importState(&st, MaxVersion); err != nil {
		return nil, fmt.Errorf("%w: state: %w", ErrBadBackup, err)
	}
	if d, err := stateDigest(&st); err != nil || d != h.Digest || st.Index != h.Index {
		return nil, fmt.Errorf("%w: state does not match the header's digest and index", ErrBadBackup)
	}
	return &Backup{Header: h, state: &st}, nil
}

// restoredState is the state a restored site starts from: the backup's,
// at cluster version 3 at least, with every peer KME its connections and
// links name listed as not reconciled.
func (b *Backup) restoredState() *snapState {
	st := *b.state
	st.Version = max(st.Version, 3)
	peers := map[string]bool{}
	for _, c := range st.Conns {
		for _, k := range []string{c.Conn.SourceKME, c.Conn.TargetKME} {
			if k != b.Header.KMEID && k != "" {
				peers[k] = true
			}
		}
	}
	for _, l := range st.Links {
		peers[l.Peer] = true
	}
	st.Restored = nil
	for p := range peers {
		st.Restored = append(st.Restored, p)
	}
	sort.Strings(st.Restored)
	return &st
}

// RestoredDigest is the FSM digest every node of a site restored from b
// has before anything else is applied.
func (b *Backup) RestoredDigest() string {
	d, _ := stateDigest(b.restoredState())
	return d
}

// Pending lists the peer KMEs a site restored from b must reconcile with.
func (b *Backup) Pending() []string { return b.restoredState().Restored }

// RestoreConfig seeds one node's data directory from a backup.
type RestoreConfig struct {
	DataDir string
	KEK     []byte
	// Servers are the voters of the new site, the same list on every node
	// (as Config.Bootstrap).
	Servers []raft.Server
}

// Restore writes b into cfg.DataDir, which must hold no Raft state, as
// the node's first snapshot; Open then starts from it (a Bootstrap list is
// ignored: the snapshot carries the configuration). Every node of the new
// site is restored from the same file with the same Servers, or only one
// of them and the others join it.
func Restore(b *Backup, cfg RestoreConfig) error {
	if len(cfg.Servers) == 0 {
		return fmt.Errorf("%w: restore needs the new site's voters", ErrInvalid)
	}
	for _, name := range []string{"raft.db", "keyring", "snapshots"} {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, name)); err == nil {
			return fmt.Errorf("%w: %s already holds %s: restore only into an empty data directory", ErrInvalid, cfg.DataDir, name)
		}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("raftstore: data dir: %w", err)
	}
	kr, err := openKeyring(filepath.Join(cfg.DataDir, "keyring"), cfg.KEK)
	if err != nil {
		return err
	}
	defer kr.close()
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}})
	if err != nil {
		return fmt.Errorf("raftstore: open raft.db: %w", err)
	}
	defer bolt.Close()
	snapDir := filepath.Join(cfg.DataDir, "snapshots")
	fss, err := raft.NewFileSnapshotStoreWithLogger(snapDir, snapRetain, hclog.NewNullLogger())
	if err != nil {
		return fmt.Errorf("raftstore: snapshot store: %w", err)
	}
	snaps, err := newEncSnapStore(fss, kr, func() {})
	if err != nil {
		return err
	}
	st := b.restoredState()
	idx := max(st.Index, 1)
	st.Index = idx
	// The transport only encodes the legacy peer list: the address as is.
	_, trans := raft.NewInmemTransport("")
	defer trans.Close()
	sink, err := snaps.Create(raft.SnapshotVersionMax, idx, 1, raft.Configuration{Servers: cfg.Servers}, idx, trans)
	if err != nil {
		return fmt.Errorf("raftstore: restore: %w", err)
	}
	if err := json.NewEncoder(sink).Encode(st); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("raftstore: restore: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("raftstore: restore: %w", err)
	}
	return restrictDirs(snapDir)
}

// PoolPosition is one connection's pool stream positions at a site: bits
// before Carve are assigned or burned, End is every bit ever added.
type PoolPosition struct {
	Conn  Connection `json:"conn"`
	Carve int64      `json:"carve"`
	End   int64      `json:"end"`
}

// Positions lists every connection's pool positions from the leader's
// committed state, sorted by connection ID, and the peers not reconciled
// yet since a restore (empty on a site that was never restored).
func (s *Store) Positions(ctx context.Context) ([]PoolPosition, []string, error) {
	if err := s.readCheck(ctx); err != nil {
		return nil, nil, err
	}
	s.fsm.mu.RLock()
	defer s.fsm.mu.RUnlock()
	out := make([]PoolPosition, 0, len(s.fsm.st.conns))
	for _, cs := range s.fsm.st.conns {
		out = append(out, PoolPosition{Conn: cs.conn, Carve: cs.carve, End: cs.end})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Conn.ID() < out[j].Conn.ID() })
	return out, slices.Clone(s.fsm.st.restored), nil
}

// reconcileCmd reconciles a restored site with peer: Conns are the peer
// site's pool positions of every connection between the two sites.
type reconcileCmd struct {
	At    int64          `json:"at"`
	Peer  string         `json:"peer"`
	Conns []PoolPosition `json:"conns"`
}

// Reconcile ends the restored state for peer, given the peer site's pool
// positions (its Positions of the connections it shares with this site):
// every key issued here before the backup on a connection with peer is
// burned, each such pool drops its stock and jumps to the peer's end (or
// its own, if further), a connection the peer no longer has is deleted,
// one the peer has and this site lacks is created at the peer's end. A
// peer this site does not wait for is a no-op. Refused (ErrInvalid) for a
// peer the backup holds a QKD link with: its pad stream cannot be
// reconciled this way (docs/OPERATIONS.md).
func (s *Store) Reconcile(ctx context.Context, peer string, conns []PoolPosition) error {
	if peer == "" {
		return fmt.Errorf("%w: reconcile needs the peer KME ID", ErrInvalid)
	}
	for _, p := range conns {
		if err := validateConn(p.Conn); err != nil {
			return err
		}
	}
	return s.submit(ctx, cmdReconcile, reconcileCmd{At: s.now(), Peer: peer, Conns: conns}).err
}

func (st *fsmState) reconcile(c *reconcileCmd) result {
	if !slices.Contains(st.restored, c.Peer) {
		return result{}
	}
	if _, ok := st.links[c.Peer]; ok {
		return invalid("reconcile: the state holds a QKD link with %s; its pad stream cannot be reconciled, rebuild the pair", c.Peer)
	}
	reported := map[string]PoolPosition{}
	for _, p := range c.Conns {
		if p.Conn.SourceKME != c.Peer && p.Conn.TargetKME != c.Peer {
			return invalid("reconcile: connection %s is not shared with %s", p.Conn.ID(), c.Peer)
		}
		if p.Carve < 0 || p.End < p.Carve || p.End%8 != 0 {
			return invalid("reconcile: connection %s: bad positions", p.Conn.ID())
		}
		if _, dup := reported[p.Conn.ID()]; dup {
			return invalid("reconcile: connection %s reported twice", p.Conn.ID())
		}
		reported[p.Conn.ID()] = p
	}
	shared := func(cn Connection) bool { return cn.SourceKME == c.Peer || cn.TargetKME == c.Peer }
	// Every key of a shared connection issued before the backup: the peer
	// may have served it (the master handed it out, the slave fetched it).
	for _, k := range st.keys {
		if cs := st.conns[k.conn]; cs != nil && shared(cs.conn) && k.state == kIssued {
			k.state = kBurned
			cs.live--
			cs.burned++
			st.finalize(k)
		}
	}
	for id, cs := range st.conns {
		if !shared(cs.conn) {
			continue
		}
		p, ok := reported[id]
		if !ok {
			st.deleteConn(&deleteCmd{At: c.At, Master: cs.conn.MasterSAE, Slave: cs.conn.SlaveSAE})
			continue
		}
		pos := max(cs.end, p.End)
		cs.burnedBits += cs.end - cs.carve
		for _, h := range cs.holes {
			cs.burnedBits += h.end - h.start
		}
		cs.holes = nil
		cs.carve, cs.end = pos, pos
		cs.importing = ""
		cs.prune()
	}
	for id, p := range reported {
		if _, ok := st.conns[id]; !ok {
			st.conns[id] = &connState{conn: p.Conn, carve: p.End, end: p.End}
		}
	}
	st.restored = slices.DeleteFunc(slices.Clone(st.restored), func(s string) bool { return s == c.Peer })
	return result{}
}

// gate refuses, while the site waits to reconcile with a peer, every
// command that hands out or records a key of a connection with that peer,
// or moves its pool, an import or a link with it.
func (st *fsmState) gate(body any) error {
	if len(st.restored) == 0 {
		return nil
	}
	pendingConn := func(id string) bool {
		cs, ok := st.conns[id]
		return ok && (slices.Contains(st.restored, cs.conn.SourceKME) || slices.Contains(st.restored, cs.conn.TargetKME))
	}
	var peer string
	bad := false
	switch c := body.(type) {
	case *issueCmd:
		bad = pendingConn(Connection{MasterSAE: c.MasterSAE, SlaveSAE: c.SlaveSAE}.ID())
	case *recordCmd:
		bad = pendingConn(Connection{MasterSAE: c.Assignment.MasterSAE, SlaveSAE: c.Assignment.SlaveSAE}.ID())
	case *consumeCmd:
		for _, id := range c.KeyIDs {
			if k, ok := st.keys[id]; ok && pendingConn(k.conn) {
				bad = true
			}
		}
	case *addBlockCmd:
		bad = pendingConn(c.ConnID) || slices.Contains(st.restored, c.LinkPeer)
	case *importCmd:
		bad = pendingConn(c.Conn)
	case *registerCmd:
		bad = slices.Contains(st.restored, c.Conn.SourceKME) || slices.Contains(st.restored, c.Conn.TargetKME)
	case *padsCmd:
		peer = c.Peer
	case *dropCmd:
		peer = c.Peer
	}
	if bad || (peer != "" && slices.Contains(st.restored, peer)) {
		return fmt.Errorf("%w (waiting for %v): run qkdkms restore reconcile", ErrNotReconciled, st.restored)
	}
	return nil
}
