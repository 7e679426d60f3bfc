// Package link is a site's QKD link to a peer site: the leader-only duty
// that runs BB84 sessions with the peer site's leader over one mutual-TLS
// connection (simulated photons and the classical channel multiplexed on
// it), authenticates every session's transcript with Wegman–Carter tags,
// schedules which connection's pool a session fills, and commits the
// resulting block at the slave site first, then at the master site.
//
// The site whose KME ID sorts first plays Alice: its leader dials the
// peer, picks connections and drives sessions; the other site's leader
// answers. A session that fails anywhere before the slave site's commit adds
// nothing anywhere (I6). The one window left — the slave site committed and
// the master site did not — is closed at the start of the next session:
// the sites compare their last link blocks and the site that is one block
// ahead drops it (it was never carved, since only the master site carves).
// docs/ARCHITECTURE.md, "The link session" and "Leader changes", draws both.
package link

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sort"
	"sync"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/plugins/steps"
	"qkdkms/quantum"
	"qkdkms/quantum/auth"
	"qkdkms/quantum/session"
	"qkdkms/quantum/sim"
	"qkdkms/quantum/simrun"
	"qkdkms/raftstore"
)

// ALPN marks a TLS connection on a node's port as a QKD link connection.
const ALPN = "qkdkms-link/1"

// Errors.
var (
	// ErrNotLeader: the peer node is not its site's leader.
	ErrNotLeader = errors.New("link: peer is not the leader")
	// ErrDiverged: the two sites' link histories differ by more than one
	// uncommitted block; an operator must look (never happens unless state
	// was lost).
	ErrDiverged = errors.New("link: link histories diverged")
	// ErrRefused: the peer refused the session (reason in the message).
	ErrRefused = errors.New("link: session refused by peer")
)

// Store is what the link needs from the site store.
type Store interface {
	IsLeader() bool
	Connections(ctx context.Context) ([]raftstore.ConnectionStatus, error)
	AddBlock(ctx context.Context, b raftstore.Block) error
	LinkState(ctx context.Context, peer string) (raftstore.LinkState, error)
	ReservePads(ctx context.Context, peer string, upTo uint64) error
	Pads(ctx context.Context, peer string, from, to uint64) ([]byte, error)
	ReleasePads(ctx context.Context, peer string, below uint64) error
	DropLastBlock(ctx context.Context, peer, blockID string) error
}

// Plugins supplies the runner for a proposed plugin selection.
type Plugins interface {
	// Active is this site's chosen selection (Raft state).
	Active(ctx context.Context) (host.Selection, error)
	// Runner builds a runner for a selection; an error when a plugin is
	// not installed here.
	Runner(sel host.Selection) (host.Runner, error)
}

// Config configures a link.
type Config struct {
	LocalKME, PeerKME string
	PeerAddrs         []string // the peer site's node addresses
	Store             Store
	Plugins           Plugins
	// Dial opens a TLS connection with ALPN to a peer node, verifying that
	// it carries the peer's kme: identity.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Model is the simulated channel (Alice's side applies it in transit).
	Model sim.Model
	// PSK is the pre-shared authentication secret: 16 bytes of hash key,
	// then pad material. Identical at both sites.
	PSK []byte
	// BlockBits is the target sifted key-block size per session.
	BlockBits int
	// AuthReserveBytes is how much of each session's key tops up the
	// authentication pad stream while it holds less than AuthTargetBytes.
	AuthReserveBytes int
	AuthTargetBytes  int
	// Idle is how long Alice waits when no pool needs keys.
	Idle           time.Duration
	SessionTimeout time.Duration
	TagBits        int
	EpsSec         float64
	Logger         *slog.Logger
}

func (c *Config) defaults() {
	if c.BlockBits == 0 {
		c.BlockBits = 400_000
	}
	if c.AuthReserveBytes == 0 {
		c.AuthReserveBytes = 4 * auth.PadSize
	}
	if c.AuthTargetBytes == 0 {
		c.AuthTargetBytes = 64 << 10
	}
	if c.Idle == 0 {
		c.Idle = 500 * time.Millisecond
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 2 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Link is one site's end of a QKD link.
type Link struct {
	cfg   Config
	alice bool
	hash  auth.Hash

	mu       sync.Mutex
	leader   context.Context // set while this node leads; nil otherwise
	eve      float64
	fiber    *sim.Fiber
	agreed   host.Selection // last selection both sites ran
	status   Status
	rateWin  []sample
	serving  *wire      // the connection Serve answers now
	released uint64     // pad stream bytes this leader erased (sessions run one at a time)
	serveMu  sync.Mutex // one responder session at a time
	aliceRun sync.Mutex
}

type sample struct {
	at   time.Time
	bits int
}

// Status is what the link reports (metrics, status screens).
type Status struct {
	Peer           string    `json:"peer"`
	Role           string    `json:"role"` // alice or bob
	Connected      bool      `json:"connected"`
	Sessions       int64     `json:"sessions"`
	Aborted        int64     `json:"aborted"`
	LastError      string    `json:"last_error,omitempty"`
	LastQBER       float64   `json:"qber"` // last session's QBER, aborted or not
	LastFinalBits  int       `json:"last_final_bits"`
	CommittedBits  int64     `json:"committed_bits"`
	DiscardedBits  int64     `json:"discarded_bits"`
	KeyRate        float64   `json:"key_rate_bps"` // committed bits per wall second, last minute
	AuthPadsUsed   uint64    `json:"auth_pad_bytes_used"`
	AuthPadsLeft   int64     `json:"auth_pad_bytes_left"`
	Eve            float64   `json:"eve"`
	PluginMismatch string    `json:"plugin_mismatch,omitempty"`
	Plugins        string    `json:"plugins,omitempty"`
	LastSession    time.Time `json:"last_session"`
}

// New validates cfg and builds a link.
func New(cfg Config) (*Link, error) {
	cfg.defaults()
	if cfg.LocalKME == "" || cfg.PeerKME == "" || cfg.LocalKME == cfg.PeerKME {
		return nil, fmt.Errorf("link: need two distinct KME IDs, got %q and %q", cfg.LocalKME, cfg.PeerKME)
	}
	if len(cfg.PSK) < auth.HashKeySize+2*auth.PadSize {
		return nil, fmt.Errorf("link: pre-shared secret of %d bytes is too short (need ≥ %d)", len(cfg.PSK), auth.HashKeySize+2*auth.PadSize)
	}
	if err := cfg.Model.Validate(); err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	h, err := auth.NewHash(cfg.PSK[:auth.HashKeySize])
	if err != nil {
		return nil, err
	}
	l := &Link{cfg: cfg, alice: cfg.LocalKME < cfg.PeerKME, hash: h}
	l.status.Peer = cfg.PeerKME
	l.status.Role = "bob"
	if l.alice {
		l.status.Role = "alice"
	}
	return l, nil
}

// Alice reports whether this site drives the link.
func (l *Link) Alice() bool { return l.alice }

// Status returns a snapshot of the link's figures.
func (l *Link) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.status
	s.Eve = l.eve
	cut := time.Now().Add(-time.Minute)
	var bits int
	first := time.Now()
	for _, x := range l.rateWin {
		if x.at.After(cut) {
			bits += x.bits
			if x.at.Before(first) {
				first = x.at
			}
		}
	}
	if span := time.Since(first).Seconds(); bits > 0 && span > 0 {
		s.KeyRate = float64(bits) / math.Max(span, 1)
	}
	return s
}

// SetEve sets the fraction of pulses an intercept-resend eavesdropper
// attacks on the simulated fiber. The fiber runs at Alice's site.
func (l *Link) SetEve(p float64) error {
	if !l.alice {
		return fmt.Errorf("link: the simulated fiber to %s runs at %s (it plays Alice); set the eavesdropper there", l.cfg.PeerKME, min(l.cfg.LocalKME, l.cfg.PeerKME))
	}
	if p < 0 || p > 1 || math.IsNaN(p) {
		return fmt.Errorf("link: eavesdropper fraction %v outside [0,1]", p)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.eve = p
	if l.fiber != nil {
		return l.fiber.SetEve(p)
	}
	return nil
}

// Run is the leader-only duty: it returns when ctx ends (leadership lost or
// node stopping). Alice dials and drives sessions; Bob accepts them in Serve
// while Run holds the leader context.
func (l *Link) Run(ctx context.Context) {
	l.mu.Lock()
	l.leader = ctx
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.leader = nil
		l.status.Connected = false
		l.mu.Unlock()
	}()
	if !l.alice {
		<-ctx.Done()
		return
	}
	l.aliceRun.Lock()
	defer l.aliceRun.Unlock()
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := l.driveConnection(ctx)
		if ctx.Err() != nil {
			return
		}
		l.noteError(err)
		l.cfg.Logger.Warn("link to peer down", "peer", l.cfg.PeerKME, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (l *Link) noteError(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.status.LastError = err.Error()
	}
}

// dialLeader finds the peer site's leader among its nodes.
func (l *Link) dialLeader(ctx context.Context) (*wire, error) {
	var errs []error
	for _, addr := range l.cfg.PeerAddrs {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := l.cfg.Dial(dctx, addr)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w := newWire(conn)
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = l.helloAsAlice(hctx, w)
		cancel()
		if err == nil {
			return w, nil
		}
		_ = w.Close()
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return nil, fmt.Errorf("link: no leader reachable at %s: %w", l.cfg.PeerKME, errors.Join(errs...))
}

// Link-level messages (JSON on the classical channel).
type msg struct {
	Type string `json:"type"`
	// hello
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// start / ready
	Master    string         `json:"master,omitempty"`
	Slave     string         `json:"slave,omitempty"`
	Plugins   host.Selection `json:"plugins,omitempty"`
	LastBlock string         `json:"last_block,omitempty"`
	PrevBlock string         `json:"prev_block,omitempty"`
	PadOffset uint64         `json:"pad_offset,omitempty"`
	// commit
	BlockID  string `json:"block_id,omitempty"`
	KeyBytes int    `json:"key_bytes,omitempty"`
	Auth     int    `json:"auth,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func send(ctx context.Context, ch interface {
	Send(context.Context, []byte) error
}, m msg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return ch.Send(ctx, b)
}

func recv(ctx context.Context, ch interface {
	Recv(context.Context) ([]byte, error)
}, want string) (msg, error) {
	b, err := ch.Recv(ctx)
	if err != nil {
		return msg{}, err
	}
	var m msg
	if err := json.Unmarshal(b, &m); err != nil {
		return msg{}, fmt.Errorf("link: undecodable %q message: %w", want, err)
	}
	if m.Type == "refuse" {
		return m, fmt.Errorf("%w: %s", ErrRefused, m.Reason)
	}
	if m.Type == "not_leader" {
		return m, ErrNotLeader
	}
	if m.Type != want {
		return m, fmt.Errorf("link: expected %q message, got %q", want, m.Type)
	}
	return m, nil
}

func (l *Link) helloAsAlice(ctx context.Context, w *wire) error {
	if err := send(ctx, w, msg{Type: "hello", From: l.cfg.LocalKME, To: l.cfg.PeerKME}); err != nil {
		return err
	}
	_, err := recv(ctx, w, "hello")
	return err
}

// driveConnection runs sessions over one connection until it fails.
func (l *Link) driveConnection(ctx context.Context) error {
	w, err := l.dialLeader(ctx)
	if err != nil {
		return err
	}
	defer w.Close()
	stop := context.AfterFunc(ctx, func() { _ = w.Close() })
	defer stop()

	var seed [8]byte
	_, _ = rand.Read(seed[:])
	fiber, err := sim.NewFiber(l.cfg.Model, binary.LittleEndian.Uint64(seed[:]))
	if err != nil {
		return err
	}
	l.mu.Lock()
	if err := fiber.SetEve(l.eve); err != nil {
		l.mu.Unlock()
		return err
	}
	l.fiber = fiber
	l.status.Connected = true
	l.mu.Unlock()
	_, _ = rand.Read(seed[:])
	simTx, err := sim.NewTransmitter(l.cfg.Model, binary.LittleEndian.Uint64(seed[:]), fiber.OnSend(quantumLink{w}))
	if err != nil {
		return err
	}
	// Frame f+1 crosses the quantum link while frame f is post-processed.
	tx := quantum.NewPrefetchTransmitter(simTx)
	defer tx.Close()
	l.cfg.Logger.Info("link up", "peer", l.cfg.PeerKME, "role", "alice")
	for frame := uint64(1); ctx.Err() == nil; frame++ {
		conn, ok, err := l.pick(ctx)
		if err != nil {
			return err
		}
		if !ok {
			// Nothing to fill: keep the connection alive with a ping.
			if err := l.ping(ctx, w); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(l.cfg.Idle):
			}
			continue
		}
		if err := l.aliceSession(ctx, w, tx, frame, conn); err != nil {
			l.countAbort(err)
			if errors.Is(err, session.ErrAbort) || errors.Is(err, ErrRefused) {
				// The session ended cleanly with no key; the link is fine.
				// Pause before the next try so a persistent cause (an
				// eavesdropper, a plugin mismatch) does not spin.
				l.cfg.Logger.Warn("session aborted", "peer", l.cfg.PeerKME, "err", err)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(l.cfg.Idle):
				}
				continue
			}
			return err
		}
	}
	return ctx.Err()
}

func (l *Link) ping(ctx context.Context, w *wire) error {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := send(pctx, w, msg{Type: "ping"}); err != nil {
		return err
	}
	_, err := recv(pctx, w, "pong")
	return err
}

func (l *Link) countAbort(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.status.Aborted++
	l.status.LastError = err.Error()
}

// pick chooses the connection whose pool a session fills: connections
// between the two sites whose pool holds fewer than max_key_count keys,
// highest QoS priority first, then the emptiest (by fill ratio).
func (l *Link) pick(ctx context.Context) (raftstore.ConnectionStatus, bool, error) {
	conns, err := l.cfg.Store.Connections(ctx)
	if err != nil {
		return raftstore.ConnectionStatus{}, false, err
	}
	c, ok := Pick(conns, l.cfg.LocalKME, l.cfg.PeerKME)
	return c, ok, nil
}

// Pick is the scheduler's choice among conns (exported for tests).
func Pick(conns []raftstore.ConnectionStatus, a, b string) (raftstore.ConnectionStatus, bool) {
	var cand []raftstore.ConnectionStatus
	for _, c := range conns {
		between := (c.SourceKME == a && c.TargetKME == b) || (c.SourceKME == b && c.TargetKME == a)
		if between && c.MaxKeyCount > 0 && c.StoredKeys < int64(c.MaxKeyCount) {
			cand = append(cand, c)
		}
	}
	if len(cand) == 0 {
		return raftstore.ConnectionStatus{}, false
	}
	sort.SliceStable(cand, func(i, j int) bool {
		if cand[i].Priority != cand[j].Priority {
			return cand[i].Priority > cand[j].Priority
		}
		fi := float64(cand[i].StoredKeys) / float64(cand[i].MaxKeyCount)
		fj := float64(cand[j].StoredKeys) / float64(cand[j].MaxKeyCount)
		if fi != fj {
			return fi < fj
		}
		return cand[i].ID() < cand[j].ID()
	})
	return cand[0], true
}

// needBytes is how much key the connection's pool can still take.
func needBytes(c raftstore.ConnectionStatus) int {
	missing := int64(c.MaxKeyCount)*int64(c.KeySize) - c.StoredBits
	if missing <= 0 {
		return 0
	}
	return int((missing + 7) / 8)
}

// syncHistory compares the two sites' last link blocks and drops this
// site's last block when it is the one the peer never committed.
func (l *Link) syncHistory(ctx context.Context, mine raftstore.LinkState, peerLast, peerPrev string) error {
	switch {
	case mine.LastBlock == peerLast:
		return nil
	case mine.PrevBlock == peerLast && mine.LastBlock != "":
		l.cfg.Logger.Warn("dropping the last link block: the peer site never committed it",
			"peer", l.cfg.PeerKME, "block", mine.LastBlock)
		return l.cfg.Store.DropLastBlock(ctx, l.cfg.PeerKME, mine.LastBlock)
	case peerPrev == mine.LastBlock:
		return nil // the peer is one ahead and drops its block
	default:
		return fmt.Errorf("%w: last blocks %q (here) and %q (peer)", ErrDiverged, mine.LastBlock, peerLast)
	}
}

// pads reserves and reads this session's two one-time pads, starting at
// the larger of both sites' pad offsets so that no pad is ever used twice.
func (l *Link) pads(ctx context.Context, st raftstore.LinkState, offset uint64) (ab, ba []byte, err error) {
	end := offset + 2*auth.PadSize
	if err := l.cfg.Store.ReservePads(ctx, l.cfg.PeerKME, end); err != nil {
		return nil, nil, fmt.Errorf("link: reserve pads: %w", err)
	}
	buf, err := l.padBytes(ctx, offset, end)
	if err != nil {
		return nil, nil, err
	}
	// Pads are used once: erase the used stream material (the PSK file's
	// pads are the operator's to retire with the file), in steps of
	// releaseStep bytes to spare a Raft commit per session.
	if psk := uint64(len(l.cfg.PSK) - auth.HashKeySize); end > psk && end-psk >= l.released+releaseStep {
		if err := l.cfg.Store.ReleasePads(ctx, l.cfg.PeerKME, end-psk); err != nil {
			return nil, nil, fmt.Errorf("link: release used pads: %w", err)
		}
		l.released = end - psk
	}
	st.PadOffset = end
	l.mu.Lock()
	l.status.AuthPadsUsed = end
	l.status.AuthPadsLeft = l.padsLeft(st)
	l.mu.Unlock()
	return buf[:auth.PadSize], buf[auth.PadSize:], nil
}

// releaseStep is how much used pad material accumulates before the link
// erases it: eight sessions' pads.
const releaseStep = 8 * 2 * auth.PadSize

// padBytes reads [from,to) of the pad stream: the PSK's pad part, then the
// material sessions reserved.
func (l *Link) padBytes(ctx context.Context, from, to uint64) ([]byte, error) {
	psk := l.cfg.PSK[auth.HashKeySize:]
	out := make([]byte, 0, to-from)
	n := uint64(len(psk))
	if from < n {
		out = append(out, psk[from:min(to, n)]...)
	}
	if to > n {
		rest, err := l.cfg.Store.Pads(ctx, l.cfg.PeerKME, max(from, n)-n, to-n)
		if err != nil {
			return nil, fmt.Errorf("link: %w: %w", auth.ErrNoPad, err)
		}
		out = append(out, rest...)
	}
	return out, nil
}

// padsLeft is the unused pad material after offset.
func (l *Link) padsLeft(st raftstore.LinkState) int64 {
	return int64(len(l.cfg.PSK)-auth.HashKeySize) + int64(st.StreamBytes) - int64(st.PadOffset)
}

// split decides how much of a session's key tops up the pad stream and how
// much goes to the pool: the pool gets at most what it can take; the auth
// stream gets AuthReserveBytes while it holds less than AuthTargetBytes.
func (l *Link) split(keyBytes int, st raftstore.LinkState, need int) (authBytes, blockBytes int) {
	if l.padsLeft(st) < int64(l.cfg.AuthTargetBytes) {
		authBytes = min(l.cfg.AuthReserveBytes, keyBytes)
	}
	blockBytes = min(keyBytes-authBytes, need)
	return authBytes, blockBytes
}

func blockID(id [16]byte) string { return hex.EncodeToString(id[:]) }

// aliceSession runs one session as the initiator.
func (l *Link) aliceSession(ctx context.Context, w *wire, tx quantum.Transmitter, frame uint64, conn raftstore.ConnectionStatus) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.SessionTimeout)
	defer cancel()
	ch := auth.NewChannel(w, l.hash)
	st, err := l.cfg.Store.LinkState(ctx, l.cfg.PeerKME)
	if err != nil {
		return err
	}
	sel, runner, err := l.proposal(ctx)
	if err != nil {
		return err
	}
	start := msg{Type: "start", Master: conn.MasterSAE, Slave: conn.SlaveSAE, Plugins: sel,
		LastBlock: st.LastBlock, PrevBlock: st.PrevBlock, PadOffset: st.PadOffset}
	if err := send(ctx, ch, start); err != nil {
		return err
	}
	ready, err := recv(ctx, ch, "ready")
	if err != nil {
		if errors.Is(err, ErrRefused) && ready.Plugins != nil {
			l.noteMismatch(sel, ready.Plugins)
		}
		return err
	}
	if !sameSelection(sel, ready.Plugins) {
		// Bob runs the last agreed set instead of our new one.
		l.noteMismatch(sel, ready.Plugins)
		if _, runner, err = l.resolve(ready.Plugins); err != nil {
			return fmt.Errorf("%w: peer proposes plugins we cannot run: %w", ErrRefused, err)
		}
	} else {
		l.noteAgreed(sel, runner)
	}
	if err := l.syncHistory(ctx, st, ready.LastBlock, ready.PrevBlock); err != nil {
		return err
	}
	ab, ba, err := l.pads(ctx, st, max(st.PadOffset, ready.PadOffset))
	if err != nil {
		return err
	}
	cfg := session.Config{
		Runner: runner, Pulses: simrun.PulsesFor(l.cfg.Model, l.cfg.BlockBits),
		IntensityProbs: l.cfg.Model.IntensityProbs, TagBits: l.cfg.TagBits, EpsSec: l.cfg.EpsSec,
		Timeout: l.cfg.SessionTimeout, Logger: l.cfg.Logger,
	}
	res, err := session.Alice(ctx, cfg, tx, ch, frame)
	tx.Release(frame)
	l.noteQBER(res)
	if err != nil {
		return err
	}
	defer clear(res.Key)
	// The split is part of the authenticated transcript: a changed split
	// would make the sites store different blocks.
	authBytes, blockBytes := l.split(len(res.Key), st, needBytes(conn))
	c := msg{Type: "commit", BlockID: blockID(res.BlockID), KeyBytes: blockBytes, Auth: authBytes}
	if err := send(ctx, ch, c); err != nil {
		return err
	}
	if err := ch.Confirm(ctx, ab, ba); err != nil {
		return fmt.Errorf("%w: %w", session.ErrAbort, err)
	}
	return l.commit(ctx, w, conn, res, c)
}

// commit stores the block at both sites: the slave site first, then the
// master site.
func (l *Link) commit(ctx context.Context, w *wire, conn raftstore.ConnectionStatus, res session.Result, c msg) error {
	if c.Auth+c.KeyBytes > len(res.Key) || c.Auth < 0 || c.KeyBytes < 0 {
		return fmt.Errorf("%w: commit of %d+%d bytes from a %d-byte key", session.ErrProtocol, c.Auth, c.KeyBytes, len(res.Key))
	}
	b := raftstore.Block{
		ConnectionID: conn.ID(), BlockID: c.BlockID, LinkPeer: l.cfg.PeerKME,
		AuthBits: append([]byte(nil), res.Key[:c.Auth]...),
		Bits:     append([]byte(nil), res.Key[c.Auth:c.Auth+c.KeyBytes]...),
	}
	defer clear(b.Bits)
	defer clear(b.AuthBits)
	slaveHere := conn.TargetKME == l.cfg.LocalKME
	if slaveHere {
		if err := l.cfg.Store.AddBlock(ctx, b); err != nil {
			_ = send(ctx, w, msg{Type: "refuse", Reason: "slave site commit failed: " + err.Error()})
			return fmt.Errorf("link: commit at slave site: %w", err)
		}
		if err := send(ctx, w, msg{Type: "committed", BlockID: c.BlockID}); err != nil {
			return err
		}
		if _, err := recv(ctx, w, "committed"); err != nil {
			// The master site may not have the block; the next session's
			// history check drops it here.
			return fmt.Errorf("link: master site did not confirm block %s: %w", c.BlockID, err)
		}
	} else {
		if _, err := recv(ctx, w, "committed"); err != nil {
			return fmt.Errorf("link: slave site did not commit block %s: %w", c.BlockID, err)
		}
		if err := l.cfg.Store.AddBlock(ctx, b); err != nil {
			return fmt.Errorf("link: commit at master site: %w", err)
		}
		if err := send(ctx, w, msg{Type: "committed", BlockID: c.BlockID}); err != nil {
			return err
		}
	}
	l.noteSession(res, c)
	l.cfg.Logger.Info("block committed", "peer", l.cfg.PeerKME, "connection", conn.ID(), "block", c.BlockID,
		"bits", 8*c.KeyBytes, "auth_bytes", c.Auth, "qber", res.QBERZ, "final_bits", res.FinalBits)
	return nil
}

// noteQBER records the QBER a session measured, also when it aborted (an
// eavesdropper shows as a QBER too high for any key).
func (l *Link) noteQBER(res session.Result) {
	if res.QBERX == 0 {
		return // aborted before estimation
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.status.LastQBER = res.QBERX
}

func (l *Link) noteSession(res session.Result, c msg) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.status.Sessions++
	l.status.LastQBER = res.QBERX
	l.status.LastFinalBits = res.FinalBits
	l.status.CommittedBits += int64(8 * c.KeyBytes)
	l.status.DiscardedBits += int64(res.FinalBits - 8*(c.KeyBytes+c.Auth))
	l.status.LastSession = time.Now()
	l.status.LastError = ""
	now := time.Now()
	l.rateWin = append(l.rateWin, sample{now, 8 * c.KeyBytes})
	cut := now.Add(-time.Minute)
	for len(l.rateWin) > 0 && l.rateWin[0].at.Before(cut) {
		l.rateWin = l.rateWin[1:]
	}
}

func (l *Link) noteMismatch(ours, theirs host.Selection) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.status.PluginMismatch = fmt.Sprintf("this site wants %s, %s runs %s", selString(ours), l.cfg.PeerKME, selString(theirs))
	l.cfg.Logger.Warn("plugin mismatch with peer site; keys keep flowing on the set both run",
		"peer", l.cfg.PeerKME, "ours", selString(ours), "theirs", selString(theirs))
}

// UsesPlugin reports whether the plugin set last agreed with the peer (the
// one sessions run until a new set is agreed) names the plugin.
func (l *Link) UsesPlugin(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.agreed {
		if n == name {
			return true
		}
	}
	return false
}

func (l *Link) noteAgreed(sel host.Selection, r host.Runner) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.agreed = sel
	l.status.PluginMismatch = ""
	l.status.Plugins = r.Identity()
}

// resolve fills in the default plugin for every step a selection leaves
// out, so selections compare by what actually runs.
func (l *Link) resolve(sel host.Selection) (host.Selection, host.Runner, error) {
	r, err := l.cfg.Plugins.Runner(sel)
	if err != nil {
		return nil, nil, err
	}
	full := host.Selection{}
	for _, k := range steps.Kinds {
		full[k] = r.Plugin(k).Name
	}
	return full, r, nil
}

// proposal is the selection this site proposes (its active one, resolved)
// and a runner for it.
func (l *Link) proposal(ctx context.Context) (host.Selection, host.Runner, error) {
	sel, err := l.cfg.Plugins.Active(ctx)
	if err != nil {
		return nil, nil, err
	}
	return l.resolve(sel)
}

// accept decides which selection Bob runs for Alice's proposal: the
// proposal when it equals Bob's active selection or the last agreed one;
// otherwise the last agreed selection (keys keep flowing on the old set).
func (l *Link) accept(ctx context.Context, proposed host.Selection) (host.Selection, host.Runner, error) {
	active, _, err := l.proposal(ctx)
	if err != nil {
		return nil, nil, err
	}
	l.mu.Lock()
	agreed := l.agreed
	l.mu.Unlock()
	if sameSelection(proposed, active) || (agreed != nil && sameSelection(proposed, agreed)) {
		full, r, err := l.resolve(proposed)
		if err != nil {
			return nil, nil, err
		}
		if sameSelection(proposed, active) {
			l.noteAgreed(full, r)
		} else {
			l.noteMismatch(active, proposed)
		}
		return full, r, nil
	}
	l.noteMismatch(active, proposed)
	if agreed == nil {
		return active, nil, fmt.Errorf("plugin sets differ (%s here) and none was agreed before", selString(active))
	}
	full, r, err := l.resolve(agreed)
	if err != nil {
		return nil, nil, err
	}
	return full, r, nil
}

// Serve answers a link connection from the peer's leader (Bob's side). It
// returns when the connection fails or this node stops leading.
func (l *Link) Serve(conn net.Conn) {
	w := newWire(conn)
	defer w.Close()
	l.mu.Lock()
	ctx := l.leader
	l.mu.Unlock()
	hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	hello, err := recv(hctx, w, "hello")
	cancel()
	if err != nil {
		return
	}
	if ctx == nil || ctx.Err() != nil || !l.cfg.Store.IsLeader() {
		_ = send(context.Background(), w, msg{Type: "not_leader"})
		return
	}
	if hello.From != l.cfg.PeerKME || hello.To != l.cfg.LocalKME || l.alice {
		_ = send(ctx, w, msg{Type: "refuse", Reason: fmt.Sprintf("this is %s, which does not answer %s", l.cfg.LocalKME, hello.From)})
		return
	}
	// The newest connection from the peer's leader wins: a previous one may
	// hang on a peer that vanished without closing it (a partition, a new
	// leader at the peer), so close it before serving this one.
	l.mu.Lock()
	if l.serving != nil {
		_ = l.serving.Close()
	}
	l.serving = w
	l.mu.Unlock()
	l.serveMu.Lock()
	defer l.serveMu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = w.Close() })
	defer stop()
	if err := send(ctx, w, msg{Type: "hello", From: l.cfg.LocalKME, To: l.cfg.PeerKME}); err != nil {
		return
	}
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	simRx, err := sim.NewReceiver(l.cfg.Model, binary.LittleEndian.Uint64(seed[:]), quantumLink{w})
	if err != nil {
		l.cfg.Logger.Error("link: receiver", "err", err)
		return
	}
	// Bob measures frame f+1 while frame f is post-processed.
	rx := quantum.NewPrefetchReceiver(simRx)
	defer rx.Close()
	l.mu.Lock()
	l.status.Connected = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.status.Connected = false
		l.mu.Unlock()
	}()
	l.cfg.Logger.Info("link up", "peer", l.cfg.PeerKME, "role", "bob")
	for ctx.Err() == nil {
		if err := l.bobSession(ctx, w, rx); err != nil {
			if ctx.Err() != nil || errors.Is(err, errLinkGone) {
				return
			}
			l.countAbort(err)
			if errors.Is(err, session.ErrAbort) || errors.Is(err, ErrRefused) {
				l.cfg.Logger.Warn("session aborted", "peer", l.cfg.PeerKME, "err", err)
				continue
			}
			l.cfg.Logger.Warn("link to peer down", "peer", l.cfg.PeerKME, "err", err)
			return
		}
	}
}

var errLinkGone = errors.New("link: connection closed")

// bobSession answers one session (or a ping).
func (l *Link) bobSession(ctx context.Context, w *wire, rx quantum.Receiver) error {
	ch := auth.NewChannel(w, l.hash)
	b, err := ch.Recv(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", errLinkGone, err)
	}
	var start msg
	if err := json.Unmarshal(b, &start); err != nil {
		return fmt.Errorf("link: undecodable message: %w", err)
	}
	if start.Type == "ping" {
		return send(ctx, w, msg{Type: "pong"})
	}
	if start.Type != "start" {
		return fmt.Errorf("link: expected start, got %q", start.Type)
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.SessionTimeout)
	defer cancel()
	refuse := func(reason string, sel host.Selection) error {
		_ = send(ctx, ch, msg{Type: "refuse", Reason: reason, Plugins: sel})
		return fmt.Errorf("%w: %s", ErrRefused, reason)
	}
	conn, err := l.connection(ctx, start.Master, start.Slave)
	if err != nil {
		return refuse(err.Error(), nil)
	}
	sel, runner, err := l.accept(ctx, start.Plugins)
	if err != nil {
		return refuse(err.Error(), sel)
	}
	st, err := l.cfg.Store.LinkState(ctx, l.cfg.PeerKME)
	if err != nil {
		return refuse(err.Error(), nil)
	}
	if err := l.syncHistory(ctx, st, start.LastBlock, start.PrevBlock); err != nil {
		return refuse(err.Error(), nil)
	}
	if err := send(ctx, ch, msg{Type: "ready", Plugins: sel, LastBlock: st.LastBlock, PrevBlock: st.PrevBlock, PadOffset: st.PadOffset}); err != nil {
		return err
	}
	ab, ba, err := l.pads(ctx, st, max(st.PadOffset, start.PadOffset))
	if err != nil {
		return err
	}
	cfg := session.Config{Runner: runner, TagBits: l.cfg.TagBits, EpsSec: l.cfg.EpsSec, Timeout: l.cfg.SessionTimeout, Logger: l.cfg.Logger}
	res, err := session.Bob(ctx, cfg, rx, ch)
	l.noteQBER(res)
	if err != nil {
		return err
	}
	defer clear(res.Key)
	c, err := recv(ctx, ch, "commit")
	if err != nil {
		return err
	}
	if err := ch.Confirm(ctx, ba, ab); err != nil {
		return fmt.Errorf("%w: %w", session.ErrAbort, err)
	}
	if c.BlockID != blockID(res.BlockID) {
		return fmt.Errorf("%w: commit names block %s, session made %s", session.ErrProtocol, c.BlockID, blockID(res.BlockID))
	}
	return l.commit(ctx, w, conn, res, c)
}

func (l *Link) connection(ctx context.Context, master, slave string) (raftstore.ConnectionStatus, error) {
	conns, err := l.cfg.Store.Connections(ctx)
	if err != nil {
		return raftstore.ConnectionStatus{}, err
	}
	for _, c := range conns {
		if c.MasterSAE == master && c.SlaveSAE == slave {
			return c, nil
		}
	}
	return raftstore.ConnectionStatus{}, fmt.Errorf("no connection %s→%s at %s", master, slave, l.cfg.LocalKME)
}

func sameSelection(a, b host.Selection) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func selString(s host.Selection) string {
	if len(s) == 0 {
		return "(none)"
	}
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += ","
		}
		out += k + "=" + s[steps.Kind(k)]
	}
	return out
}
