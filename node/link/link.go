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
// the master site did not — is closed when the next connection starts (at
// every session start under protocol 1): the sites compare their last link
// blocks and the site that is one block ahead drops it (it was never
// carved, since only the master site carves). Under protocol 2 a block's
// commit runs while the next session measures and post-processes; commits
// stay in order and a failed one ends the connection.
// docs/ARCHITECTURE.md, "The link session" and "Leader changes", draws both.
//
// Files: link.go (the duty, its configuration and status), wire.go (the
// framed connection), negotiate.go (messages, plugin agreement, history
// check), pads.go (authentication pads), relay.go (the relay pool's
// share of the key), alice.go and bob.go (the two session roles),
// commit.go (storing a block at both sites).
package link

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/quantum"
	"qkdkms/quantum/auth"
	"qkdkms/quantum/session"
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
	// RelayStreams is the link's relay key per direction (relay.go), from
	// this site's committed state.
	RelayStreams(peer string) [2]raftstore.RelayStream
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
	// Driver is the link's quantum hardware or its simulation
	// (quantum/DRIVERS.md); the link closes it when it stops.
	Driver quantum.Driver
	// PSK is the pre-shared authentication secret: 16 bytes of hash key,
	// then pad material. Identical at both sites.
	PSK []byte
	// BlockBits is the target sifted key-block size per session.
	BlockBits int
	// AuthReserveBytes is how much of each session's key tops up the
	// authentication pad stream while it holds less than AuthTargetBytes.
	AuthReserveBytes int
	AuthTargetBytes  int
	// RelayPoolBytes is the relay key the link keeps per direction (0: the
	// link makes none); RelayShare, in [0, 1], is the fraction of a
	// connection's session key (after the pad top-up) that goes to relay
	// while the relay pool is below target. Alice's values decide
	// (relay.go; node/CONFIG.md, "Relay pool").
	RelayPoolBytes int
	RelayShare     float64
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
	agreed   host.Selection  // last selection both sites ran
	status   Status
	rateWin  []sample
	serving  *wire      // the connection Serve answers now
	released uint64     // pad stream bytes this leader erased (sessions run one at a time)
	serveMu  sync.Mutex // one responder session at a time
	aliceRun sync.Mutex
	sched    scheduler // Alice's; used under aliceRun
	// relayOff is set when this site's store refused relay material
	// (raftstore.ErrNotEnabled) and cleared when leadership starts anew.
	relayOff atomic.Bool
}

type sample struct {
	at   time.Time
	bits int
}

// Status is what the link reports (metrics, status screens).
type Status struct {
	Peer           string         `json:"peer"`
	Role           string         `json:"role"` // alice or bob
	Connected      bool           `json:"connected"`
	Sessions       int64          `json:"sessions"`
	Aborted        int64          `json:"aborted"`
	LastError      string         `json:"last_error,omitempty"`
	LastQBER       float64        `json:"qber"` // last session's QBER, aborted or not
	LastFinalBits  int            `json:"last_final_bits"`
	CommittedBits  int64          `json:"committed_bits"`
	DiscardedBits  int64          `json:"discarded_bits"`
	KeyRate        float64        `json:"key_rate_bps"` // committed bits per wall second, last minute
	AuthPadsUsed   uint64         `json:"auth_pad_bytes_used"`
	AuthPadsLeft   int64          `json:"auth_pad_bytes_left"`
	Eve            float64        `json:"eve"`
	Driver         quantum.Health `json:"driver"`
	PluginMismatch string         `json:"plugin_mismatch,omitempty"`
	Plugins        string         `json:"plugins,omitempty"`
	LastSession    time.Time      `json:"last_session"`
	// The relay pool (node/CONFIG.md, "Relay pool"): the target per
	// direction, the relay key available at this site for sending to the
	// peer (out) and for receiving from it (in), and the relay key this
	// leader's link committed, both directions together.
	RelayTarget    int   `json:"relay_target_bytes"`
	RelayOut       int64 `json:"relay_out_bytes"`
	RelayIn        int64 `json:"relay_in_bytes"`
	RelayCommitted int64 `json:"relay_committed_bytes"`
	// StepSeconds is this site's wall time per post-processing step
	// (sift, estimate, reconcile, verify, amplify) in the last committed
	// BB84 session.
	StepSeconds map[string]float64 `json:"step_seconds,omitempty"`
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
	switch cfg.Driver.(type) {
	case quantum.PhotonDriver, quantum.KeyDevice:
	default:
		return nil, fmt.Errorf("link: driver %T is neither a photon driver nor a key-delivery device", cfg.Driver)
	}
	if cfg.RelayPoolBytes < 0 || !(cfg.RelayShare >= 0 && cfg.RelayShare <= 1) {
		return nil, fmt.Errorf("link: relay pool of %d bytes with share %v (need ≥ 0 bytes and a share in [0, 1])", cfg.RelayPoolBytes, cfg.RelayShare)
	}
	h, err := auth.NewHash(cfg.PSK[:auth.HashKeySize])
	if err != nil {
		return nil, err
	}
	l := &Link{cfg: cfg, alice: cfg.LocalKME < cfg.PeerKME, hash: h}
	l.status.Peer = cfg.PeerKME
	l.status.RelayTarget = max(0, cfg.RelayPoolBytes)
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
	levels := l.relayLevels(nil)
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.status
	if e, ok := l.cfg.Driver.(eavesdropped); ok {
		s.Eve = e.Eve()
	}
	s.Driver = l.cfg.Driver.Health()
	out := raftstore.RelayDir(l.cfg.LocalKME, l.cfg.PeerKME)
	s.RelayOut, s.RelayIn = levels[out], levels[1-out]
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

// eavesdropped is a driver with a simulated eavesdropper (the "sim" driver).
type eavesdropped interface {
	SetEve(p float64) error
	Eve() float64
}

// SetEve sets the fraction of pulses an intercept-resend eavesdropper
// attacks on the simulated fiber. The fiber runs at Alice's site.
func (l *Link) SetEve(p float64) error {
	e, ok := l.cfg.Driver.(eavesdropped)
	if !ok {
		return fmt.Errorf("link: the %s driver of the link to %s has no simulated eavesdropper", l.cfg.Driver.Health().Driver, l.cfg.PeerKME)
	}
	if !l.alice {
		return fmt.Errorf("link: the simulated fiber to %s runs at %s (it plays Alice); set the eavesdropper there", l.cfg.PeerKME, min(l.cfg.LocalKME, l.cfg.PeerKME))
	}
	return e.SetEve(p)
}

// Run is the leader-only duty: it returns when ctx ends (leadership lost or
// node stopping). Alice dials and drives sessions; Bob accepts them in Serve
// while Run holds the leader context.
func (l *Link) Run(ctx context.Context) {
	l.mu.Lock()
	l.leader = ctx
	l.mu.Unlock()
	l.relayOff.Store(false)
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
	const firstBackoff = 200 * time.Millisecond
	backoff := firstBackoff
	for ctx.Err() == nil {
		before := l.Status().Sessions
		err := l.driveConnection(ctx)
		if ctx.Err() != nil {
			return
		}
		if l.Status().Sessions > before {
			backoff = firstBackoff // the connection worked: a fresh failure
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

func (l *Link) countAbort(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.status.Aborted++
	l.status.LastError = err.Error()
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
	l.status.RelayCommitted += int64(c.Relay)
	l.status.DiscardedBits += int64(res.FinalBits - 8*(c.KeyBytes+c.Auth+c.Relay))
	l.status.LastSession = time.Now()
	l.status.LastError = ""
	if len(res.Steps) > 0 {
		l.status.StepSeconds = make(map[string]float64, len(res.Steps))
		for _, st := range res.Steps {
			l.status.StepSeconds[string(st.Kind)] += st.Wall.Seconds()
		}
	}
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

// env is what the driver gets for one connection.
func (l *Link) env(w *wire) quantum.LinkEnv {
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	return quantum.LinkEnv{Transport: quantumTransport{w}, BlockBits: l.cfg.BlockBits,
		Seed: binary.LittleEndian.Uint64(seed[:]), Logger: l.cfg.Logger}
}
