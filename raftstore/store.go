package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// ErrClosed: the store was shut down.
var ErrClosed = errors.New("raftstore: store closed")

// Batching limits: one Raft entry carries at most this many commands or
// bytes; at most maxInFlight entries are being applied at once, and commands
// arriving meanwhile queue up for the next entry.
const (
	maxBatchOps   = 1024
	maxBatchBytes = 1 << 20
	logCacheSize  = 512
	snapRetain    = 2
)

// maxInFlight bounds the Raft entries being applied at once (tunable in
// benchmarks).
var maxInFlight = 1

// Linger of the batcher (tunable in benchmarks): after the queue ran dry it
// waits up to lingerTick for another command, for at most lingerMax in all.
var (
	lingerTick = 200 * time.Microsecond
	lingerMax  = 2 * time.Millisecond
)

// Store is one node's replica of the site state. It implements Admin.
type Store struct {
	cfg    Config
	log    *slog.Logger
	kek    []byte
	fsm    *fsm
	raft   *raft.Raft
	bolt   *raftboltdb.BoltStore
	logs   *encLogStore
	kr     *keyring
	notify chan bool

	queue chan *op
	stop  chan struct{}
	wg    sync.WaitGroup

	ready    atomic.Bool // leader and barrier done for this term
	isLeader atomic.Bool // last value raft notified
	kick     chan struct{}
	subsMu   sync.Mutex
	subs     map[chan bool]struct{}
	last     bool // last value published

	closeOnce sync.Once
	closeErr  error

	// Cluster version reports (version.go), leader only.
	raiseKick chan struct{}
	reportsMu sync.Mutex
	reports   map[string]versionReport

	commits     atomic.Uint64
	commitNanos atomic.Int64
	lastCommit  atomic.Int64
	batchedOps  atomic.Uint64
}

var _ Admin = (*Store)(nil)

type op struct {
	data []byte
	done chan result
}

// Open opens (or creates) a node's store in cfg.DataDir and starts Raft.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.NodeID == "" || cfg.DataDir == "" || cfg.Transport == nil {
		return nil, fmt.Errorf("%w: NodeID, DataDir and Transport are required", ErrInvalid)
	}
	if len(cfg.KEK) != KEKSize {
		return nil, fmt.Errorf("%w: KEK must be %d bytes", ErrBadKEK, KEKSize)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raftstore: data dir: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if cfg.MaxVersion == 0 || cfg.MaxVersion > MaxVersion {
		cfg.MaxVersion = MaxVersion
	}
	s := &Store{cfg: cfg, log: logger.With("node", cfg.NodeID), kek: append([]byte(nil), cfg.KEK...),
		notify: make(chan bool, 1), kick: make(chan struct{}, 1), queue: make(chan *op, 4096), stop: make(chan struct{}), subs: map[chan bool]struct{}{},
		raiseKick: make(chan struct{}, 1), reports: map[string]versionReport{}}
	s.fsm = newFSMMax(cfg.MaxVersion, s.log)
	s.fsm.onBroken = s.stepDown
	ok := false
	defer func() {
		if !ok {
			s.closeFiles()
		}
	}()

	level := hclog.Warn
	if cfg.RaftLogLevel != "" {
		level = hclog.LevelFromString(cfg.RaftLogLevel)
	}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: level, Output: &slogWriter{l: s.log}, DisableTime: true})

	var err error
	s.kr, err = openKeyring(filepath.Join(cfg.DataDir, "keyring"), cfg.KEK)
	if err != nil {
		return nil, err
	}
	s.bolt, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), NoSync: cfg.NoSync,
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}})
	if err != nil {
		return nil, fmt.Errorf("raftstore: open raft.db: %w", err)
	}
	s.logs, err = newEncLogStore(s.bolt, s.kr)
	if err != nil {
		return nil, err
	}
	cached, err := raft.NewLogCache(logCacheSize, s.logs)
	if err != nil {
		return nil, err
	}
	snapDir := filepath.Join(cfg.DataDir, "snapshots")
	fss, err := raft.NewFileSnapshotStoreWithLogger(snapDir, snapRetain, hl)
	if err != nil {
		return nil, fmt.Errorf("raftstore: snapshot store: %w", err)
	}
	if err := restrictDirs(snapDir); err != nil {
		return nil, err
	}
	snaps, err := newEncSnapStore(fss, s.kr, func() {
		if err := restrictDirs(snapDir); err != nil {
			s.log.Error("restricting snapshot directories failed", "err", err)
		}
		if err := s.logs.rotate(); err != nil {
			s.log.Error("log epoch rotation failed", "err", err)
		}
	})
	if err != nil {
		return nil, err
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hl
	rc.NotifyCh = s.notify
	rc.NoLegacyTelemetry = true
	rc.BatchApplyCh = true
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	}
	if cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	if cfg.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	}
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if cfg.CommitTimeout > 0 {
		rc.CommitTimeout = cfg.CommitTimeout
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raftstore: raft config: %w", err)
	}

	has, err := raft.HasExistingState(cached, s.bolt, snaps)
	if err != nil {
		return nil, fmt.Errorf("raftstore: %w", err)
	}
	if !has && len(cfg.Bootstrap) > 0 {
		if err := raft.BootstrapCluster(rc, cached, s.bolt, snaps, cfg.Transport,
			raft.Configuration{Servers: cfg.Bootstrap}); err != nil {
			return nil, fmt.Errorf("raftstore: bootstrap: %w", err)
		}
		s.log.Info("bootstrapped site", "voters", len(cfg.Bootstrap))
	}
	s.raft, err = raft.NewRaft(rc, s.fsm, cached, s.bolt, snaps, cfg.Transport)
	if err != nil {
		return nil, fmt.Errorf("raftstore: start raft: %w", err)
	}
	ok = true
	s.wg.Add(4)
	go s.raiser()
	go s.batcher()
	go s.pumpNotify()
	go s.watchLeader()
	return s, nil
}

// slogWriter forwards hclog's lines to slog.
type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	switch {
	case strings.Contains(line, "[ERROR]"):
		lvl = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		lvl = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
		lvl = slog.LevelDebug
	}
	w.l.Log(context.Background(), lvl, line, "component", "raft")
	return len(p), nil
}

// Raft exposes the underlying Raft instance (metrics, tests).
func (s *Store) Raft() *raft.Raft { return s.raft }

// ---- leadership ----

func (s *Store) leaderErr() error {
	if _, id := s.raft.LeaderWithID(); id != "" && id != raft.ServerID(s.cfg.NodeID) {
		return ErrNotLeader
	}
	return ErrNoLeader
}

// mapApplyErr maps the error of raft.Apply. ErrLeadershipLost comes after
// the entry was appended to the leader's log: it may still commit under the
// next leader, so it is ErrOutcomeUnknown, never not-leader. Errors raised
// before the entry was dispatched (raft.ErrNotLeader, a transfer in
// progress, shutdown) changed nothing and map as mapRaftErr does.
func (s *Store) mapApplyErr(err error) error {
	if errors.Is(err, raft.ErrLeadershipLost) {
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return s.mapRaftErr(err)
}

func (s *Store) mapRaftErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %w", ErrClosed, err)
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrNotVoter):
		// For reads and membership changes: nothing of ours was appended
		// (a membership change is idempotent and retried). Log entries go
		// through mapApplyErr instead.
		return fmt.Errorf("%w: %w", s.leaderErr(), err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", ErrNoLeader, err)
	}
	return err
}

// IsLeader reports whether this node is the leader right now.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's server ID and address, "" when unknown.
func (s *Store) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

func waitFuture(ctx context.Context, f raft.Future) error {
	ch := make(chan error, 1)
	go func() { ch <- f.Error() }()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pumpNotify drains raft's NotifyCh at once (raft blocks on it) and
// wakes watchLeader, which may be busy with a barrier.
func (s *Store) pumpNotify() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			return
		case v := <-s.notify:
			s.isLeader.Store(v)
			if !v {
				s.ready.Store(false)
			}
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
	}
}

func (s *Store) watchLeader() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		}
		if !s.isLeader.Load() {
			s.ready.Store(false)
			s.publish(false)
			continue
		}
		// A barrier's future may never be answered once Raft shuts down
		// (a node killed in a test's cleanup hung here): Shutdown's stop
		// ends the wait; the goroutine left waiting ends with Raft.
		barrier := s.raft.Barrier(0)
		done := make(chan error, 1)
		go func() { done <- barrier.Error() }()
		var err error
		select {
		case <-s.stop:
			return
		case err = <-done:
		}
		if err != nil {
			s.log.Warn("barrier after election failed", "err", err)
			continue // a leadership change kicked us again
		}
		if !s.isLeader.Load() || s.raft.State() != raft.Leader {
			continue
		}
		s.ready.Store(true)
		s.log.Info("became leader")
		s.publish(true)
		s.kickRaise()
	}
}

func (s *Store) publish(v bool) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	if v == s.last {
		return
	}
	if !v {
		s.log.Info("lost leadership")
	}
	s.last = v
	for ch := range s.subs {
		select {
		case ch <- v:
		default: // subscriber is behind: replace its oldest value
			select {
			case <-ch:
			default:
			}
			ch <- v
		}
	}
}

// LeaderChanges delivers true when this node becomes leader (after a
// barrier) and false when it stops. If the node is the ready leader when the
// subscription starts, true is delivered first. The channel is closed when
// ctx ends or the store shuts down.
func (s *Store) LeaderChanges(ctx context.Context) <-chan bool {
	ch := make(chan bool, 16)
	s.subsMu.Lock()
	select {
	case <-s.stop:
		s.subsMu.Unlock()
		close(ch)
		return ch
	default:
	}
	s.subs[ch] = struct{}{}
	if s.last {
		ch <- true
	}
	s.subsMu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
		case <-s.stop:
		}
		s.subsMu.Lock()
		if _, ok := s.subs[ch]; ok {
			delete(s.subs, ch)
			close(ch)
		}
		s.subsMu.Unlock()
	}()
	return ch
}

// ---- writes ----

func (s *Store) batcher() {
	defer s.wg.Done()
	sem := make(chan struct{}, maxInFlight)
	for {
		select {
		case sem <- struct{}{}:
		case <-s.stop:
			return
		}
		var first *op
		select {
		case first = <-s.queue:
		case <-s.stop:
			return
		}
		batch, size := []*op{first}, len(first.data)
		// Take what is queued; then linger while more keeps arriving (the
		// callers of the batch that just committed come back within
		// microseconds), up to lingerMax. A lone caller waits one tick.
		var timer *time.Timer
		deadline := time.Now().Add(lingerMax)
	collect:
		for len(batch) < maxBatchOps && size < maxBatchBytes {
			select {
			case o := <-s.queue:
				batch = append(batch, o)
				size += len(o.data)
				continue
			default:
			}
			wait := min(lingerTick, time.Until(deadline))
			if wait <= 0 {
				break
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			select {
			case o := <-s.queue:
				batch = append(batch, o)
				size += len(o.data)
				timer.Stop()
			case <-timer.C:
				break collect
			case <-s.stop:
				timer.Stop()
				break collect
			}
		}
		go func() {
			defer func() { <-sem }()
			s.applyBatch(batch)
		}()
	}
}

func (s *Store) applyBatch(batch []*op) {
	data := batch[0].data
	if len(batch) > 1 {
		cmds := make([][]byte, len(batch))
		for i, o := range batch {
			cmds[i] = o.data
		}
		data = encodeBatch(cmds)
	}
	start := time.Now()
	f := s.raft.Apply(data, 0)
	if err := f.Error(); err != nil {
		err = s.mapApplyErr(err)
		for _, o := range batch {
			o.done <- result{err: err}
		}
		return
	}
	d := time.Since(start)
	s.commits.Add(1)
	s.commitNanos.Add(int64(d))
	s.lastCommit.Store(int64(d))
	s.batchedOps.Add(uint64(len(batch)))
	switch r := f.Response().(type) {
	case result:
		// One result for the whole entry: a single command, or an FSM
		// that refused the entry (ErrUpgradeRequired).
		for _, o := range batch {
			o.done <- r
		}
	case []result:
		for i, o := range batch {
			o.done <- r[i]
		}
	default:
		for _, o := range batch {
			o.done <- result{err: fmt.Errorf("raftstore: unexpected apply response %T", r)}
		}
	}
}

// submit runs one command through the batcher on the leader.
func (s *Store) submit(ctx context.Context, t cmdType, body any) result {
	select {
	case <-s.stop:
		return result{err: ErrClosed}
	default:
	}
	if s.raft.State() != raft.Leader {
		return result{err: s.leaderErr()}
	}
	if err := s.fsm.brokenErr(); err != nil {
		return result{err: err}
	}
	e := registry.forBody(t, body, MaxVersion)
	if e == nil {
		return result{err: fmt.Errorf("%w: command %d unknown", ErrInvalid, byte(t))}
	}
	if e.version > s.cfg.MaxVersion {
		return result{err: fmt.Errorf("%w: %s needs cluster version %d, this node supports up to %d",
			ErrNotEnabled, e.name, e.version, s.cfg.MaxVersion)}
	}
	if cv := s.fsm.clusterVersion(); e.version > cv && !e.raise {
		return result{err: fmt.Errorf("%w: %s needs cluster version %d, the site is at %d (upgrade every node; docs/RAFT-FORMAT.md)",
			ErrNotEnabled, e.name, e.version, cv)}
	}
	data, err := encodeEntry(e, body)
	if err != nil {
		return result{err: err}
	}
	o := &op{data: data, done: make(chan result, 1)}
	select {
	case s.queue <- o:
	case <-ctx.Done():
		return result{err: ctx.Err()}
	case <-s.stop:
		return result{err: ErrClosed}
	}
	select {
	case r := <-o.done:
		return r
	case <-ctx.Done():
		return result{err: fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())}
	case <-s.stop:
		return result{err: ErrClosed}
	}
}

func (s *Store) clock() time.Time {
	if s.cfg.Now != nil {
		return s.cfg.Now()
	}
	return time.Now()
}

func (s *Store) now() int64 { return s.clock().UnixNano() }

// RegisterConnection creates a connection (idempotent when identical).
func (s *Store) RegisterConnection(ctx context.Context, c Connection) error {
	if err := validateConn(c); err != nil {
		return err
	}
	return s.submit(ctx, cmdRegister, registerCmd{At: s.now(), Conn: c}).err
}

// UpdateConnection replaces an existing connection's parameters.
func (s *Store) UpdateConnection(ctx context.Context, c Connection) error {
	if err := validateConn(c); err != nil {
		return err
	}
	return s.submit(ctx, cmdUpdate, registerCmd{At: s.now(), Conn: c}).err
}

// DeleteConnection removes a connection; its pool and keys are burned.
func (s *Store) DeleteConnection(ctx context.Context, master, slave string) error {
	return s.submit(ctx, cmdDelete, deleteCmd{At: s.now(), Master: master, Slave: slave}).err
}

// AddBlock seals the block (fresh data key wrapped by the KEK) and appends
// it to the connection's pool. b.Bits is not retained.
func (s *Store) AddBlock(ctx context.Context, b Block) error {
	if (b.ConnectionID == "" && (b.LinkPeer == "" || len(b.Bits) > 0)) || b.BlockID == "" || len(b.Bits)+len(b.AuthBits)+len(b.RelayBits) == 0 {
		return fmt.Errorf("%w: block needs a connection ID (unless a link block without pool bits), a block ID and bits", ErrInvalid)
	}
	if b.LinkPeer == "" && (len(b.Bits) == 0 || len(b.AuthBits) > 0 || len(b.RelayBits) > 0) {
		return fmt.Errorf("%w: pad and relay bits only go with a link peer", ErrInvalid)
	}
	if s.raft.State() != raft.Leader {
		return s.leaderErr()
	}
	cmd := addBlockCmd{At: s.now(), ConnID: b.ConnectionID, BlockID: b.BlockID, Bytes: len(b.Bits), LinkPeer: b.LinkPeer}
	var err error
	if len(b.Bits) > 0 {
		if cmd.Wrapped, cmd.Sealed, err = sealBlock(s.kek, b.ConnectionID, b.BlockID, b.Bits); err != nil {
			return err
		}
	}
	if len(b.AuthBits) > 0 {
		cmd.AuthBytes = len(b.AuthBits)
		if cmd.AuthWrapped, cmd.AuthSealed, err = sealBlock(s.kek, linkAADID(b.LinkPeer), b.BlockID, b.AuthBits); err != nil {
			return err
		}
	}
	if len(b.RelayBits) == 0 {
		return s.submit(ctx, cmdAddBlock, cmd).err
	}
	if b.RelaySplit < 0 || b.RelaySplit > len(b.RelayBits) {
		return fmt.Errorf("%w: relay split %d of %d bytes", ErrInvalid, b.RelaySplit, len(b.RelayBits))
	}
	rc := addRelayBlockCmd{addBlockCmd: cmd}
	for dir, part := range [][]byte{b.RelayBits[:b.RelaySplit], b.RelayBits[b.RelaySplit:]} {
		if len(part) == 0 {
			continue
		}
		p := &rc.Relay[dir]
		p.Bytes = len(part)
		if p.Wrapped, p.Sealed, err = sealBlock(s.kek, relayAADID(b.LinkPeer, uint8(dir)), b.BlockID, part); err != nil {
			return err
		}
	}
	return s.submit(ctx, cmdAddBlock, rc).err
}

// IssueKeys carves len(r.KeyIDs) keys of r.Size bits off the pool head in
// one commit. A retry with the same RequestID returns the same keys (or
// ErrKeyNotFound if they were burned meanwhile). Empty r.Slaves means
// [r.SlaveSAE]; a zero IssuedAt is set from the leader's clock.
func (s *Store) IssueKeys(ctx context.Context, r IssueRequest) (Issued, error) {
	if r.IssuedAt.IsZero() {
		r.IssuedAt = s.clock()
	}
	if len(r.Slaves) == 0 {
		r.Slaves = []string{r.SlaveSAE}
	}
	res := s.submit(ctx, cmdIssue, issueCmd{At: s.now(), RequestID: r.RequestID, MasterSAE: r.MasterSAE,
		SlaveSAE: r.SlaveSAE, Slaves: r.Slaves, Size: r.Size, KeyIDs: r.KeyIDs, IssuedAt: r.IssuedAt.UTC()})
	if res.err != nil {
		return Issued{}, res.err
	}
	keys, err := s.open(res.keys)
	if err != nil {
		return Issued{}, err
	}
	return Issued{Keys: keys, Assignment: *res.assignment}, nil
}

// RecordAssignment commits an assignment relayed by the master site.
func (s *Store) RecordAssignment(ctx context.Context, a Assignment) error {
	return s.submit(ctx, cmdRecord, recordCmd{At: s.now(), Assignment: a}).err
}

// ConsumeKeys hands keys to a named slave; each key is erased once every
// named slave fetched it. All or nothing.
func (s *Store) ConsumeKeys(ctx context.Context, r ConsumeRequest) ([]Key, error) {
	res := s.submit(ctx, cmdConsume, consumeCmd{At: s.now(), RequestID: r.RequestID, Caller: r.Caller,
		MasterSAE: r.MasterSAE, KeyIDs: r.KeyIDs})
	if res.err != nil {
		return nil, res.err
	}
	return s.open(res.keys)
}

// BurnKeys makes keys unfetchable forever. Unknown IDs are ignored.
func (s *Store) BurnKeys(ctx context.Context, keyIDs []string) error {
	if len(keyIDs) == 0 {
		return nil
	}
	return s.submit(ctx, cmdBurn, burnCmd{At: s.now(), KeyIDs: keyIDs}).err
}

// open decrypts located keys in memory.
func (s *Store) open(outs []keyOut) ([]Key, error) {
	keys := make([]Key, len(outs))
	for i, ko := range outs {
		n := 0
		for _, sg := range ko.segs {
			n += sg.n
		}
		bits := make([]byte, n)
		pos := 0
		for _, sg := range ko.segs {
			if err := openRange(s.kek, ko.connID, sg.b, sg.off, sg.n, bits[pos:pos+sg.n]); err != nil {
				for _, k := range keys[:i] {
					clear(k.Bits)
				}
				return nil, err
			}
			pos += sg.n
		}
		keys[i] = Key{KeyID: ko.id, Bits: bits}
	}
	return keys, nil
}

// ---- reads ----

func (s *Store) readCheck(ctx context.Context) error {
	if s.raft.State() != raft.Leader {
		return s.leaderErr()
	}
	if err := s.fsm.brokenErr(); err != nil {
		return err
	}
	if !s.ready.Load() {
		if err := waitFuture(ctx, s.raft.Barrier(0)); err != nil {
			return s.mapRaftErr(err)
		}
	}
	return s.mapRaftErr(waitFuture(ctx, s.raft.VerifyLeader()))
}

// Connection returns one connection's status from the leader's committed state.
func (s *Store) Connection(ctx context.Context, master, slave string) (ConnectionStatus, error) {
	if err := s.readCheck(ctx); err != nil {
		return ConnectionStatus{}, err
	}
	return s.fsm.connection(Connection{MasterSAE: master, SlaveSAE: slave}.ID())
}

// Connections lists every connection's status, sorted by ID.
func (s *Store) Connections(ctx context.Context) ([]ConnectionStatus, error) {
	if err := s.readCheck(ctx); err != nil {
		return nil, err
	}
	return s.fsm.connections(), nil
}

// LocalConnections reads this node's applied state without any leader
// check (stale on followers). For metrics and diagnostics only.
func (s *Store) LocalConnections() []ConnectionStatus { return s.fsm.connections() }

// LocalConnection reads one connection from this node's applied state
// without any leader check (possibly stale): for validating request
// parameters cheaply; the FSM re-checks everything at Apply.
func (s *Store) LocalConnection(master, slave string) (ConnectionStatus, error) {
	if err := s.fsm.brokenErr(); err != nil {
		return ConnectionStatus{}, err
	}
	return s.fsm.connection(Connection{MasterSAE: master, SlaveSAE: slave}.ID())
}

// Digest hashes the FSM's applied state; equal on nodes at the same index.
func (s *Store) Digest() (uint64, string) { return s.fsm.digest() }

// AppliedIndex is the index of the last log entry applied to the FSM.
func (s *Store) AppliedIndex() uint64 { return s.raft.AppliedIndex() }

// ---- membership ----

// Join adds a voter; a no-op when it is already a member at that address.
func (s *Store) Join(ctx context.Context, id, addr string) error {
	if s.raft.State() != raft.Leader {
		return s.leaderErr()
	}
	cf := s.raft.GetConfiguration()
	if err := waitFuture(ctx, cf); err != nil {
		return s.mapRaftErr(err)
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == raft.ServerID(id) && srv.Address == raft.ServerAddress(addr) && srv.Suffrage == raft.Voter {
			return nil
		}
	}
	return s.mapRaftErr(waitFuture(ctx, s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 0)))
}

// Remove removes a server from the site.
func (s *Store) Remove(ctx context.Context, id string) error {
	if s.raft.State() != raft.Leader {
		return s.leaderErr()
	}
	return s.mapRaftErr(waitFuture(ctx, s.raft.RemoveServer(raft.ServerID(id), 0, 0)))
}

// Servers lists the current configuration (this node's latest view).
func (s *Store) Servers(ctx context.Context) ([]raft.Server, error) {
	cf := s.raft.GetConfiguration()
	if err := waitFuture(ctx, cf); err != nil {
		return nil, s.mapRaftErr(err)
	}
	return cf.Configuration().Servers, nil
}

// Snapshot forces a snapshot now (tests, operators).
func (s *Store) Snapshot(ctx context.Context) error {
	return waitFuture(ctx, s.raft.Snapshot())
}

// Stats returns raft.Stats plus store counters.
func (s *Store) Stats() map[string]string {
	m := s.raft.Stats()
	for k, v := range s.fsm.stats() {
		m[k] = v
	}
	c := s.commits.Load()
	m["commits"] = fmt.Sprint(c)
	m["batched_ops"] = fmt.Sprint(s.batchedOps.Load())
	m["commit_last_ms"] = fmt.Sprintf("%.3f", float64(s.lastCommit.Load())/1e6)
	if c > 0 {
		m["commit_avg_ms"] = fmt.Sprintf("%.3f", float64(s.commitNanos.Load())/float64(c)/1e6)
		m["ops_per_commit"] = fmt.Sprintf("%.2f", float64(s.batchedOps.Load())/float64(c))
	}
	m["leader_ready"] = fmt.Sprint(s.ready.Load())
	m["log_writes"] = fmt.Sprint(s.logs.writes.Load())
	m["keyring_keys"] = fmt.Sprint(len(s.kr.list(kindLog)) + len(s.kr.list(kindSnap)))
	return m
}

// ---- shutdown ----

// Shutdown hands leadership to another voter when this node leads, then
// stops Raft and closes the stores. Safe to call more than once.
func (s *Store) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		if s.raft.State() == raft.Leader && s.otherVoters(ctx) {
			if err := waitFuture(ctx, s.raft.LeadershipTransfer()); err != nil {
				s.log.Warn("leadership transfer before shutdown failed", "err", err)
			}
		}
		err := s.raft.Shutdown().Error()
		close(s.stop)
		s.wg.Wait()
		s.closeErr = errors.Join(err, s.closeFiles())
	})
	return s.closeErr
}

func (s *Store) otherVoters(ctx context.Context) bool {
	srvs, err := s.Servers(ctx)
	if err != nil {
		return false
	}
	for _, srv := range srvs {
		if srv.Suffrage == raft.Voter && srv.ID != raft.ServerID(s.cfg.NodeID) {
			return true
		}
	}
	return false
}

func (s *Store) closeFiles() error {
	var errs []error
	if s.bolt != nil {
		errs = append(errs, s.bolt.Close())
	}
	if s.kr != nil {
		errs = append(errs, s.kr.close())
	}
	return errors.Join(errs...)
}

// Close stops the node without handing leadership over (as a crash would,
// but with the files closed cleanly). Safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		err := s.raft.Shutdown().Error()
		close(s.stop)
		s.wg.Wait()
		s.closeErr = errors.Join(err, s.closeFiles())
	})
	return s.closeErr
}

// restrictDirs makes root and every directory below it mode 0700. The
// snapshot store of hashicorp/raft creates its directories (snapshots/,
// snapshots/snapshots/, one per snapshot) with mode 0755; the data directory
// is 0700 (Config.DataDir) and so are they.
func restrictDirs(root string) error {
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a snapshot reaped meanwhile
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if info.Mode().Perm() == 0o700 {
			return nil
		}
		if err := os.Chmod(path, 0o700); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("raftstore: restrict %s to 0700: %w", root, err)
	}
	return nil
}
