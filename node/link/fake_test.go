package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"qkdkms/plugins/host"
	"qkdkms/plugins/testenv"
	"qkdkms/quantum/sim"
	"qkdkms/raftstore"
)

// This file is the test harness of the link: an in-memory Store that
// mirrors raftstore's link bookkeeping (no Raft), a recorder shared by the
// two sites' stores, a tap on the connection, and a pair of Links joined by
// net.Pipe.

// Site IDs: siteA sorts first and plays Alice.
const (
	siteA = "KME-A"
	siteB = "KME-B"
)

// addEvent is one AddBlock call at one site, in the global order of the
// recorder (start and end are sequence numbers).
type addEvent struct {
	site, conn, block string
	start, end        int
	err               error
}

// recorder is shared by both sites' stores: one sequence of AddBlock calls
// across the two sites.
type recorder struct {
	mu     sync.Mutex
	seq    int
	events []*addEvent
}

func (r *recorder) begin(site string, b raftstore.Block) *addEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	e := &addEvent{site: site, conn: b.ConnectionID, block: b.BlockID, start: r.seq}
	r.events = append(r.events, e)
	return e
}

func (r *recorder) finish(e *addEvent, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	e.end, e.err = r.seq, err
}

// snapshot returns copies of the events so far.
func (r *recorder) snapshot() []addEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]addEvent, len(r.events))
	for i, e := range r.events {
		out[i] = *e
	}
	return out
}

type fakeBlock struct {
	id   string
	bits []byte
}

type fakeConn struct {
	st     raftstore.ConnectionStatus
	blocks []fakeBlock
}

// fakeLink mirrors raftstore's linkState.
type fakeLink struct {
	last, prev string
	lastConn   string
	lastPool   int
	lastAuth   int
	padOffset  uint64
	stream     []byte // every pad byte ever added (minus dropped blocks); below padsFrom is "erased"
	padsFrom   uint64
	// relay streams by direction (raftstore.RelayDir order): every relay byte ever
	// added (minus dropped blocks), and the bytes consumed.
	relay     [2][]byte
	relayUsed [2]uint64
	lastRelay [2]int
}

// fakeStore implements Store in memory for one site.
type fakeStore struct {
	site string
	rec  *recorder

	mu       sync.Mutex
	conns    map[string]*fakeConn
	order    []string
	links    map[string]*fakeLink
	adds     int            // AddBlock calls so far
	fault    addFault       // nil: every AddBlock succeeds
	onConns  func()         // runs before Connections reads (without mu held)
	afterCon func()         // runs after Connections read, before it returns
	padReads [][2]uint64    // every Pads [from,to) served
	drops    []string       // blocks DropLastBlock removed
	overfull []string       // AddBlocks that left a pool above max_key_count
	maxKeys  map[string]int // highest StoredKeys per connection
	// noRelay: the store's cluster version takes no relay material
	// (LinkState.RelayEnabled false, AddBlock with relay bits refused with
	// raftstore.ErrNotEnabled); refuseRelay: only AddBlock refuses it.
	noRelay, refuseRelay bool
}

// addFault runs before the call-th AddBlock (1-based, per store) is
// applied; an error fails the call and adds nothing. It may block.
type addFault func(ctx context.Context, call int, b raftstore.Block) error

var _ Store = (*fakeStore)(nil)

func newFakeStore(site string, rec *recorder, conns ...raftstore.Connection) *fakeStore {
	s := &fakeStore{site: site, rec: rec, conns: map[string]*fakeConn{}, links: map[string]*fakeLink{}, maxKeys: map[string]int{}}
	for _, c := range conns {
		s.conns[c.ID()] = &fakeConn{st: raftstore.ConnectionStatus{Connection: c}}
		s.order = append(s.order, c.ID())
	}
	return s
}

func (s *fakeStore) setFault(f addFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

func (s *fakeStore) setOnConnections(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onConns = f
}

// setMaxKeys changes a connection's max_key_count (an operator's update).
func (s *fakeStore) setMaxKeys(conn string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[conn].st.MaxKeyCount = n
}

func (s *fakeStore) link(peer string) *fakeLink {
	ls, ok := s.links[peer]
	if !ok {
		ls = &fakeLink{}
		s.links[peer] = ls
	}
	return ls
}

func (s *fakeStore) IsLeader() bool { return true }

func (s *fakeStore) Connections(context.Context) ([]raftstore.ConnectionStatus, error) {
	s.mu.Lock()
	hook := s.onConns
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]raftstore.ConnectionStatus, 0, len(s.order))
	for _, id := range s.order {
		out = append(out, s.conns[id].st)
	}
	after := s.afterCon
	s.mu.Unlock()
	if after != nil {
		after()
	}
	s.mu.Lock() // for the deferred Unlock
	return out, nil
}

func (s *fakeStore) AddBlock(ctx context.Context, b raftstore.Block) error {
	e := s.rec.begin(s.site, b)
	err := s.addBlock(ctx, b)
	s.rec.finish(e, err)
	return err
}

func (s *fakeStore) addBlock(ctx context.Context, b raftstore.Block) error {
	if (b.ConnectionID == "" && (b.LinkPeer == "" || len(b.Bits) > 0)) || b.BlockID == "" || len(b.Bits)+len(b.AuthBits)+len(b.RelayBits) == 0 {
		return fmt.Errorf("%w: block needs a connection ID (or a link peer and no pool bits), a block ID and bits", raftstore.ErrInvalid)
	}
	if b.LinkPeer == "" && (len(b.Bits) == 0 || len(b.AuthBits) > 0 || len(b.RelayBits) > 0) {
		return fmt.Errorf("%w: pad and relay bits only go with a link peer", raftstore.ErrInvalid)
	}
	if b.RelaySplit < 0 || b.RelaySplit > len(b.RelayBits) {
		return fmt.Errorf("%w: relay split %d of %d bytes", raftstore.ErrInvalid, b.RelaySplit, len(b.RelayBits))
	}
	// The store copies what it keeps: the link erases the block afterwards.
	b.Bits = bytes.Clone(b.Bits)
	b.AuthBits = bytes.Clone(b.AuthBits)
	b.RelayBits = bytes.Clone(b.RelayBits)
	s.mu.Lock()
	s.adds++
	call, fault := s.adds, s.fault
	refuse := s.noRelay || s.refuseRelay
	s.mu.Unlock()
	if refuse && len(b.RelayBits) > 0 {
		return fmt.Errorf("%w: relay material needs cluster version 4", raftstore.ErrNotEnabled)
	}
	if fault != nil {
		if err := fault(ctx, call, b); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.conns[b.ConnectionID]
	if !ok && b.ConnectionID != "" {
		return fmt.Errorf("%w: %s", raftstore.ErrConnectionNotFound, b.ConnectionID)
	}
	if !ok {
		c = &fakeConn{} // a relay-only block: no pool
	}
	if b.LinkPeer != "" {
		if ls := s.links[b.LinkPeer]; ls != nil && (ls.last == b.BlockID || ls.prev == b.BlockID) {
			return fmt.Errorf("%w: %s", raftstore.ErrBlockExists, b.BlockID)
		}
	}
	for _, x := range c.blocks {
		if x.id == b.BlockID {
			return fmt.Errorf("%w: %s", raftstore.ErrBlockExists, b.BlockID)
		}
	}
	if len(b.Bits) > 0 {
		c.blocks = append(c.blocks, fakeBlock{id: b.BlockID, bits: b.Bits})
		c.st.StoredBits += 8 * int64(len(b.Bits))
		c.st.StoredKeys = c.st.StoredBits / int64(c.st.KeySize)
		c.st.AddedBlocks++
		s.maxKeys[c.st.ID()] = max(s.maxKeys[c.st.ID()], int(c.st.StoredKeys))
		if c.st.StoredKeys > int64(c.st.MaxKeyCount) {
			s.overfull = append(s.overfull, fmt.Sprintf("%s: block %s left %d keys (max %d)", c.st.ID(), b.BlockID, c.st.StoredKeys, c.st.MaxKeyCount))
		}
	}
	if b.LinkPeer != "" {
		ls := s.link(b.LinkPeer)
		ls.stream = append(ls.stream, b.AuthBits...)
		ls.relay[0] = append(ls.relay[0], b.RelayBits[:b.RelaySplit]...)
		ls.relay[1] = append(ls.relay[1], b.RelayBits[b.RelaySplit:]...)
		ls.prev, ls.last = ls.last, b.BlockID
		ls.lastConn, ls.lastPool, ls.lastAuth = b.ConnectionID, len(b.Bits), len(b.AuthBits)
		ls.lastRelay = [2]int{b.RelaySplit, len(b.RelayBits) - b.RelaySplit}
	}
	return nil
}

func (s *fakeStore) LinkState(_ context.Context, peer string) (raftstore.LinkState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, ok := s.links[peer]
	if !ok {
		return raftstore.LinkState{Peer: peer, RelayEnabled: !s.noRelay}, nil
	}
	return raftstore.LinkState{Peer: peer, LastBlock: ls.last, PrevBlock: ls.prev, PadOffset: ls.padOffset,
		StreamBytes: uint64(len(ls.stream)), PadsFrom: ls.padsFrom, RelayEnabled: !s.noRelay}, nil
}

func (s *fakeStore) RelayStreams(peer string) [2]raftstore.RelayStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [2]raftstore.RelayStream
	if ls, ok := s.links[peer]; ok {
		for i := range out {
			out[i] = raftstore.RelayStream{Stream: uint64(len(ls.relay[i])), Used: ls.relayUsed[i]}
		}
	}
	return out
}

// consumeRelay marks n more bytes of the relay stream in direction dir
// consumed (a relay sent or delivered).
func (s *fakeStore) consumeRelay(peer string, dir uint8, n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls := s.link(peer)
	ls.relayUsed[dir] = min(ls.relayUsed[dir]+n, uint64(len(ls.relay[dir])))
}

// relayBytes returns copies of the relay streams.
func (s *fakeStore) relayBytes(peer string) [2][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls := s.link(peer)
	return [2][]byte{bytes.Clone(ls.relay[0]), bytes.Clone(ls.relay[1])}
}

func (s *fakeStore) ReservePads(_ context.Context, peer string, upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls := s.link(peer)
	ls.padOffset = max(ls.padOffset, upTo)
	return nil
}

func (s *fakeStore) Pads(_ context.Context, peer string, from, to uint64) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, ok := s.links[peer]
	switch {
	case from > to:
		return nil, fmt.Errorf("%w: pads [%d, %d)", raftstore.ErrInvalid, from, to)
	case !ok || to > uint64(len(ls.stream)):
		return nil, fmt.Errorf("%w: pad stream with %s holds fewer than %d bytes", raftstore.ErrInsufficientKeys, peer, to)
	case from < ls.padsFrom:
		return nil, fmt.Errorf("%w: pads below %d were released", raftstore.ErrKeyNotFound, ls.padsFrom)
	}
	s.padReads = append(s.padReads, [2]uint64{from, to})
	return bytes.Clone(ls.stream[from:to]), nil
}

func (s *fakeStore) ReleasePads(_ context.Context, peer string, below uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, ok := s.links[peer]
	if below > 0 && (!ok || below > uint64(len(ls.stream))) {
		return fmt.Errorf("%w: pads: release beyond the pad stream", raftstore.ErrInvalid)
	}
	ls = s.link(peer)
	ls.padsFrom = max(ls.padsFrom, below)
	return nil
}

func (s *fakeStore) DropLastBlock(_ context.Context, peer, blockID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, ok := s.links[peer]
	if !ok || ls.last != blockID || blockID == "" {
		return fmt.Errorf("%w: drop: %q is not the last link block with %s", raftstore.ErrInvalid, blockID, peer)
	}
	var c *fakeConn
	if ls.lastPool > 0 {
		c = s.conns[ls.lastConn]
		if c == nil || len(c.blocks) == 0 || c.blocks[len(c.blocks)-1].id != blockID {
			return fmt.Errorf("%w: drop: block %s is no longer at the pool's end", raftstore.ErrInvalid, blockID)
		}
	}
	if ls.lastAuth > 0 && ls.padsFrom > uint64(len(ls.stream)-ls.lastAuth) {
		return fmt.Errorf("%w: drop: pad material of block %s was released", raftstore.ErrInvalid, blockID)
	}
	for i, n := range ls.lastRelay {
		if n > 0 && ls.relayUsed[i] > uint64(len(ls.relay[i])-n) {
			return fmt.Errorf("%w: drop: relay material of block %s was used", raftstore.ErrInvalid, blockID)
		}
	}
	for i, n := range ls.lastRelay {
		ls.relay[i] = ls.relay[i][:len(ls.relay[i])-n]
	}
	if c != nil {
		c.blocks = c.blocks[:len(c.blocks)-1]
		c.st.StoredBits -= 8 * int64(ls.lastPool)
		c.st.StoredKeys = c.st.StoredBits / int64(c.st.KeySize)
	}
	ls.stream = ls.stream[:len(ls.stream)-ls.lastAuth]
	ls.last, ls.prev = ls.prev, ""
	ls.lastConn, ls.lastPool, ls.lastAuth, ls.lastRelay = "", 0, 0, [2]int{}
	s.drops = append(s.drops, blockID)
	return nil
}

// blocks returns the IDs and bits of a connection's blocks, in commit order.
func (s *fakeStore) blocks(conn string) []fakeBlock {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fakeBlock(nil), s.conns[conn].blocks...)
}

func (s *fakeStore) status(conn string) raftstore.ConnectionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[conn].st
}

func (s *fakeStore) dropped() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.drops...)
}

func (s *fakeStore) reads() [][2]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][2]uint64(nil), s.padReads...)
}

// nativePlugins runs the shipped step code in-process, default selection.
type nativePlugins struct{}

func (nativePlugins) Active(context.Context) (host.Selection, error) { return host.Selection{}, nil }
func (nativePlugins) Runner(sel host.Selection) (host.Runner, error) { return host.Native(sel) }

// linkMsg is what the tap reads of a link message on the classical channel.
type linkMsg struct {
	Type       string `json:"type"`
	Version    int    `json:"version"`
	PadOffset  uint64 `json:"pad_offset"`
	BlockID    string `json:"block_id"`
	KeyBytes   int    `json:"key_bytes"`
	Auth       int    `json:"auth"`
	Relay      int    `json:"relay"`
	RelaySplit int    `json:"relay_split"`
	RelayOnly  bool   `json:"relay_only"`
	RelayOK    bool   `json:"relay_ok"`
	Carry      string `json:"carry"`
	Reason     string `json:"reason"`
}

// wireLog is what the taps of both ends of every connection saw, in the
// order the messages were written.
type wireLog struct {
	mu    sync.Mutex
	kinds map[byte]int // frames by kind
	msgs  []tapped
}

type tapped struct {
	conn int    // which connection (1, 2, ...)
	from string // writing site
	m    linkMsg
}

func (l *wireLog) note(conn int, from string, kind byte, payload []byte) {
	var m linkMsg
	parsed := kind == kindClassical && len(payload) > 0 && payload[0] == '{' && json.Unmarshal(payload, &m) == nil && m.Type != ""
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kinds[kind]++
	if parsed {
		l.msgs = append(l.msgs, tapped{conn, from, m})
	}
}

func (l *wireLog) count(kind byte) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.kinds[kind]
}

func (l *wireLog) messages() []tapped {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]tapped(nil), l.msgs...)
}

// tapConn parses the frames one end writes (kind byte, 4-byte big-endian
// length, payload) and logs them. With oldVersion it rewrites the hello's
// "version":protocolVersion to "version":N (same length): N 0 is a peer
// that sent no version (protocol 1), 2 one that speaks protocol 2, and so on.
type tapConn struct {
	net.Conn
	log        *wireLog
	id         int
	site       string
	oldVersion byte  // '0' … '3'; 0: no rewrite
	rewrote    *bool // set when the hello was rewritten
	// tamper, while set, changes the frame the next start with a carry
	// names (one hex digit) and is cleared.
	tamper *atomic.Bool

	mu   sync.Mutex
	hdr  []byte
	left uint32
	kind byte
	keep bool // the frame is small enough to be a link message
	body []byte
}

const maxTapped = 4096 // link messages are small; session payloads are skipped

func (c *tapConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	p = c.scan(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// scan walks p frame by frame and returns it, perhaps rewritten (a copy:
// the caller's buffer is left alone).
func (c *tapConn) scan(p []byte) []byte {
	out := p
	for i := 0; i < len(p); {
		if c.left == 0 && len(c.hdr) < 5 {
			n := min(5-len(c.hdr), len(p)-i)
			c.hdr = append(c.hdr, p[i:i+n]...)
			i += n
			if len(c.hdr) == 5 {
				c.kind, c.left = c.hdr[0], binary.BigEndian.Uint32(c.hdr[1:])
				c.body = c.body[:0]
				c.keep = c.left <= maxTapped
				if c.left == 0 {
					c.done()
				}
			}
			continue
		}
		n := min(int(c.left), len(p)-i)
		if chunk := p[i : i+n]; c.oldVersion != 0 && c.kind == kindClassical && !*c.rewrote && bytes.Contains(chunk, []byte(`"type":"hello"`)) {
			if j := bytes.Index(chunk, fmt.Appendf(nil, `"version":%d`, protocolVersion)); j >= 0 {
				out = bytes.Clone(p)
				out[i+j+len(`"version":`)] = c.oldVersion
				*c.rewrote = true
			}
		}
		if chunk := p[i : i+n]; c.kind == kindClassical && c.tamper.Load() && bytes.Contains(chunk, []byte(`"type":"start"`)) {
			if j := bytes.Index(chunk, []byte(`"carry":"`)); j >= 0 && c.tamper.CompareAndSwap(true, false) {
				out = bytes.Clone(p)
				d := &out[i+j+len(`"carry":"`)]
				*d = map[bool]byte{true: '1', false: '0'}[*d == '0']
			}
		}
		if c.keep {
			// What the peer receives.
			c.body = append(c.body, out[i:i+n]...)
		}
		i += n
		c.left -= uint32(n)
		if c.left == 0 {
			c.done()
		}
	}
	return out
}

func (c *tapConn) done() {
	c.log.note(c.id, c.site, c.kind, c.body)
	c.hdr, c.body = c.hdr[:0], c.body[:0]
}

// pairOpts configures a test pair of sites.
type pairOpts struct {
	conns     []raftstore.Connection
	pskPads   int  // pad bytes of the PSK after the hash key (default 64 KiB)
	blockBits int  // default 30_000
	protocol1 bool // rewrite both hellos: both sites fall back to protocol 1
	protocol2 bool // rewrite both hellos: both sites speak protocol 2 (no relay)
	protocol3 bool // rewrite both hellos: both sites speak protocol 3 (no frame ahead)
	// relayPool and relayShare configure both sites' relay pool.
	relayPool  int
	relayShare float64
	// latency delays every write on the connection by this long, each way
	// (the classical channel of a long fiber: about 5 µs per km).
	latency time.Duration
	fiberKm float64 // the simulated fiber; default 1 km
}

// pair is two sites' links joined by net.Pipe: A (Alice) dials, B serves.
type pair struct {
	t      testing.TB
	a, b   *Link
	sa, sb *fakeStore
	rec    *recorder
	wire   *wireLog
	opts   pairOpts

	delays delayStats  // of the connections' writes, with pairOpts.latency
	tamper atomic.Bool // see tapConn.tamper

	mu      sync.Mutex
	dials   int
	current net.Conn // Alice's end of the newest connection
	rewrote []*bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// connection returns a connection between the two sites whose slave site
// (TargetKME) is slaveSite, with a pool of maxKeys 256-bit keys.
func connection(master, slaveSite string, maxKeys int) raftstore.Connection {
	src := siteA
	if slaveSite == siteA {
		src = siteB
	}
	return raftstore.Connection{SourceKME: src, TargetKME: slaveSite, MasterSAE: master, SlaveSAE: master + "-slave",
		KeySize: 256, MaxKeyCount: maxKeys, MaxKeyPerRequest: 16, MaxSAEIDCount: 1, MinKeySize: 64, MaxKeySize: 1024}
}

func newPair(t testing.TB, o pairOpts) *pair {
	t.Helper()
	if o.pskPads == 0 {
		o.pskPads = 64 << 10
	}
	if o.blockBits == 0 {
		o.blockBits = 30_000
	}
	psk := make([]byte, 16+o.pskPads)
	_, _ = rand.Read(psk)
	rec := &recorder{}
	p := &pair{t: t, rec: rec, opts: o, wire: &wireLog{kinds: map[byte]int{}},
		sa: newFakeStore(siteA, rec, o.conns...), sb: newFakeStore(siteB, rec, o.conns...)}
	model := sim.DefaultModel()
	model.FiberKm = 1
	if o.fiberKm > 0 {
		model.FiberKm = o.fiberKm
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	mk := func(local, peer string, st Store) *Link {
		drv, err := sim.NewModelDriver(model)
		if err != nil {
			t.Fatal(err)
		}
		l, err := New(Config{
			LocalKME: local, PeerKME: peer, PeerAddrs: []string{"node-" + peer},
			Store: st, Plugins: nativePlugins{}, Driver: drv, PSK: bytes.Clone(psk),
			// Small blocks keep sessions fast (also under -race); a weaker
			// ε_sec than the default lets the finite-key bound leave key.
			BlockBits: o.blockBits, EpsSec: 1e-3, Idle: 20 * time.Millisecond,
			RelayPoolBytes: o.relayPool, RelayShare: o.relayShare,
			SessionTimeout: testenv.Scaled(time.Minute),
			Dial:           p.dial, Logger: logger.With("site", local),
		})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	p.a, p.b = mk(siteA, siteB, p.sa), mk(siteB, siteA, p.sb)
	if !p.a.Alice() || p.b.Alice() {
		t.Fatal("site A should play Alice")
	}
	return p
}

// start runs both sites' duties with a leader context; the test's cleanup
// stops them and waits for every goroutine the pair started.
func (p *pair) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(2)
	go func() { defer p.wg.Done(); p.b.Run(ctx) }()
	// Bob's Serve answers only while its Run holds the leader context.
	testenv.WaitFor(p.t, "site B's link to hold the leader context", func() bool {
		p.b.mu.Lock()
		defer p.b.mu.Unlock()
		return p.b.leader != nil
	})
	go func() { defer p.wg.Done(); p.a.Run(ctx) }()
	p.t.Cleanup(p.stop)
}

// stop ends both duties and waits for them and every Serve.
func (p *pair) stop() {
	p.cancel()
	p.wg.Wait()
}

func (p *pair) dial(ctx context.Context, addr string) (net.Conn, error) {
	if addr != "node-"+siteB {
		return nil, fmt.Errorf("no node %s", addr)
	}
	var ca, cb net.Conn = net.Pipe()
	if p.opts.latency > 0 {
		ca, cb = delayed(ca, p.opts.latency, &p.delays), delayed(cb, p.opts.latency, &p.delays)
	}
	p.mu.Lock()
	p.dials++
	id := p.dials
	ra, rb := new(bool), new(bool)
	p.rewrote = append(p.rewrote, ra, rb)
	var old byte
	switch {
	case p.opts.protocol1:
		old = '0'
	case p.opts.protocol2:
		old = '2'
	case p.opts.protocol3:
		old = '3'
	}
	ta := &tapConn{Conn: ca, log: p.wire, id: id, site: siteA, oldVersion: old, rewrote: ra, tamper: &p.tamper}
	tb := &tapConn{Conn: cb, log: p.wire, id: id, site: siteB, oldVersion: old, rewrote: rb, tamper: &p.tamper}
	p.current = ta
	p.mu.Unlock()
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.b.Serve(tb) }()
	return ta, nil
}

func (p *pair) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dials
}

// cut closes the newest connection from outside (a network failure).
func (p *pair) cut() {
	p.mu.Lock()
	c := p.current
	p.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// committed counts the blocks of conn that both sites hold.
func (p *pair) committed(conn string) int {
	return min(len(p.sa.blocks(conn)), len(p.sb.blocks(conn)))
}

// waitBlocks waits until both sites hold at least n blocks of conn.
func (p *pair) waitBlocks(conn string, n int) {
	p.t.Helper()
	testenv.WaitFor(p.t, fmt.Sprintf("%d blocks of %s at both sites", n, conn), func() bool { return p.committed(conn) >= n })
}

// store returns the fake store of a site.
func (p *pair) store(site string) *fakeStore {
	if site == siteA {
		return p.sa
	}
	return p.sb
}

// delayConn delivers each write d after it was made, in order, without
// blocking the writer: a link whose classical channel has latency. The
// delay is time.Sleep's, so it is at least d and, on an idle Linux
// runtime, rounded up to about a millisecond; delays counts what it was.
type delayConn struct {
	net.Conn
	d      time.Duration
	q      chan delayedWrite
	done   chan struct{}
	once   sync.Once
	delays *delayStats
}

type delayedWrite struct {
	sent time.Time
	b    []byte
}

// delayStats sums the delays the delayConns of a pair imposed.
type delayStats struct {
	mu    sync.Mutex
	n     int
	total time.Duration
}

// mean is the mean delay of a write.
func (s *delayStats) mean() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		return 0
	}
	return s.total / time.Duration(s.n)
}

func delayed(c net.Conn, d time.Duration, stats *delayStats) net.Conn {
	dc := &delayConn{Conn: c, d: d, q: make(chan delayedWrite, 1<<16), done: make(chan struct{}), delays: stats}
	go dc.deliver()
	return dc
}

// deliver writes each queued write once its delay has passed.
func (c *delayConn) deliver() {
	for {
		select {
		case w := <-c.q:
			time.Sleep(time.Until(w.sent.Add(c.d)))
			c.delays.mu.Lock()
			c.delays.n++
			c.delays.total += time.Since(w.sent)
			c.delays.mu.Unlock()
			if _, err := c.Conn.Write(w.b); err != nil {
				return
			}
		case <-c.done:
			return
		}
	}
}

func (c *delayConn) Write(p []byte) (int, error) {
	select {
	case c.q <- delayedWrite{time.Now(), bytes.Clone(p)}:
		return len(p), nil
	case <-c.done:
		return 0, net.ErrClosed
	}
}

func (c *delayConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}
