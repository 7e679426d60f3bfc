package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"qkdkms/etsi"
	"qkdkms/raftstore"
)

// maxBlockBytes caps one relayed block.
const maxBlockBytes = 4096

// Peer-site calls this package serves (node wires them into the KME's
// internal endpoint, POST /internal/v1/peer/{op}).
const (
	OpHop   = "relay_hop"     // a Hop; answers a HopAnswer
	OpBurn  = "relay_burn"    // a BurnArgs at the destination
	OpState = "network_state" // answers a SiteReport
)

// Store is what the relay needs of the site store (*raftstore.Store).
type Store interface {
	Connections(ctx context.Context) ([]raftstore.ConnectionStatus, error)
	Connection(ctx context.Context, master, slave string) (raftstore.ConnectionStatus, error)
	RelayStreams(peer string) [2]raftstore.RelayStream
	RelayKey(ctx context.Context, peer string, dir uint8, from, to uint64) ([]byte, error)
	RelayStart(ctx context.Context, u raftstore.RelayUse, connID string, bits []byte) error
	RelaySend(ctx context.Context, u raftstore.RelayUse) error
	RelayReceive(ctx context.Context, u raftstore.RelayUse) error
	RelayDeliver(ctx context.Context, u raftstore.RelayUse, connID string, bits []byte) error
	RelayDone(ctx context.Context, connID, block string, hopBytes int64) error
	RelayDiscard(ctx context.Context, connID, block string) error
	RelayOutcome(ctx context.Context, peer string, dir uint8, block string) (raftstore.RelayOutcome, bool, error)
}

// Caller calls op on a peer site's leader (kme.KME.CallPeer).
type Caller func(ctx context.Context, kme, op string, in, out any) error

// LinkInfo is a direct QKD link's state on this node.
type LinkInfo struct {
	Peer string
	Up   bool
	QBER float64
}

// Config configures a Relay.
type Config struct {
	Local string   // this site's KME ID
	Sites []string // every other site (the peers map)
	// Links reports this node's direct QKD links (nil: none).
	Links func() []LinkInfo
	Store Store
	Call  Caller
	// HopTimeout bounds one hop's call including its retries (default 3s).
	HopTimeout time.Duration
	// Poll is how often the leader asks every site for its links (default
	// 1s); a report older than 4 polls is dropped (the site does not answer).
	Poll   time.Duration
	Logger *slog.Logger
}

// BurnArgs asks the destination to burn a relayed block of a connection.
type BurnArgs struct {
	Master string `json:"master"`
	Slave  string `json:"slave"`
	Block  string `json:"block"`
}

// Relay runs the trusted-node relay of one node: the hop and burn calls on
// every node (they run on the leader) and, while this node leads, the duty
// that fills connections to sites without a direct link.
type Relay struct {
	cfg Config
	log *slog.Logger

	alloc sync.Mutex // one relay-key allocation at a time (this site sends in its directions only)

	mu       sync.Mutex
	reports  map[string]report
	avoid    map[string]time.Time // sites a hop failed at, avoided until then
	routes   map[string]Route     // last route used per destination
	onward   map[string]*Hop      // block → the hop this leader passed on (retries resend it)
	inflight map[string]*flight   // block → a hop being handled
	stats    Stats
	lat      []float64 // seconds of the last blocks completed here (ring)
	latNext  int
}

// latWindow is how many block latencies the percentiles cover.
const latWindow = 512

type report struct {
	SiteReport
	at time.Time
}

type flight struct {
	done chan struct{}
	ans  HopAnswer
	err  error
}

// Stats counts relayed blocks at this node (since it started).
type Stats struct {
	Delivered     int64 `json:"delivered"`      // blocks this source site completed
	DeliveredBits int64 `json:"delivered_bits"` // their bits
	Burned        int64 `json:"burned"`         // blocks this source site burned (outcome not delivered)
	Forwarded     int64 `json:"forwarded"`      // hops passed on as an intermediate site
	Received      int64 `json:"received"`       // blocks delivered here as the destination
	// P50Seconds and P99Seconds are the wall time of the last (up to 512)
	// blocks this source completed, from start to done.
	P50Seconds float64 `json:"p50_seconds"`
	P99Seconds float64 `json:"p99_seconds"`
}

// New builds a Relay.
func New(cfg Config) *Relay {
	if cfg.HopTimeout <= 0 {
		cfg.HopTimeout = 3 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Links == nil {
		cfg.Links = func() []LinkInfo { return nil }
	}
	return &Relay{cfg: cfg, log: cfg.Logger, reports: map[string]report{}, avoid: map[string]time.Time{},
		routes: map[string]Route{}, onward: map[string]*Hop{}, inflight: map[string]*flight{}}
}

// Ops are the peer calls to serve, by name.
func (r *Relay) Ops() map[string]func(ctx context.Context, from string, body json.RawMessage) (any, error) {
	return map[string]func(context.Context, string, json.RawMessage) (any, error){
		OpHop: func(ctx context.Context, from string, body json.RawMessage) (any, error) {
			var h Hop
			if err := json.Unmarshal(body, &h); err != nil {
				return nil, fmt.Errorf("%w: relay hop: %v", etsi.ErrBadRequest, err)
			}
			return r.HandleHop(ctx, from, h)
		},
		OpBurn: func(ctx context.Context, from string, body json.RawMessage) (any, error) {
			var b BurnArgs
			if err := json.Unmarshal(body, &b); err != nil {
				return nil, fmt.Errorf("%w: relay burn: %v", etsi.ErrBadRequest, err)
			}
			return struct{}{}, r.HandleBurn(ctx, from, b)
		},
		OpState: func(ctx context.Context, from string, body json.RawMessage) (any, error) {
			return r.LocalReport(), nil
		},
	}
}

// LocalReport is this site's links as this node sees them.
func (r *Relay) LocalReport() SiteReport {
	rep := SiteReport{KME: r.cfg.Local, Links: []LinkReport{}}
	for _, l := range r.cfg.Links() {
		st := r.cfg.Store.RelayStreams(l.Peer)
		out, in := st[raftstore.RelayDir(r.cfg.Local, l.Peer)], st[raftstore.RelayDir(l.Peer, r.cfg.Local)]
		rep.Links = append(rep.Links, LinkReport{Peer: l.Peer, Up: l.Up, QBER: l.QBER,
			Out: out.Available(), In: in.Available(), OutUsed: out.Used, InUsed: in.Used})
	}
	return rep
}

func (r *Relay) direct(peer string) bool {
	for _, l := range r.cfg.Links() {
		if l.Peer == peer {
			return true
		}
	}
	return false
}

// ---- hops ----

// HandleHop serves a hop from site from (on the leader). A retry of a hop
// already handled gets the first outcome; a hop handled by an earlier
// leader of this site whose onward outcome is unknown here answers
// not-delivered (the source then burns the block).
func (r *Relay) HandleHop(ctx context.Context, from string, h Hop) (HopAnswer, error) {
	if err := h.check(r.cfg.Local, from); err != nil {
		return HopAnswer{}, fmt.Errorf("%w: %v", etsi.ErrBadRequest, err)
	}
	r.mu.Lock()
	if f, ok := r.inflight[h.Block]; ok {
		r.mu.Unlock()
		select {
		case <-f.done:
			return f.ans, f.err
		case <-ctx.Done():
			return HopAnswer{}, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	r.inflight[h.Block] = f
	r.mu.Unlock()
	f.ans, f.err = r.hop(ctx, from, h)
	r.mu.Lock()
	delete(r.inflight, h.Block)
	r.mu.Unlock()
	close(f.done)
	return f.ans, f.err
}

func (r *Relay) hop(ctx context.Context, from string, h Hop) (HopAnswer, error) {
	dir := raftstore.RelayDir(from, r.cfg.Local)
	u := raftstore.RelayUse{Peer: from, Dir: dir, BlockID: h.Block, From: h.From, To: h.To}
	last := h.Index == len(h.Route)-1
	fail := func(format string, args ...any) (HopAnswer, error) {
		return HopAnswer{FailedAt: r.cfg.Local, Reason: fmt.Sprintf(format, args...)}, nil
	}
	if o, ok, err := r.cfg.Store.RelayOutcome(ctx, from, dir, h.Block); err != nil {
		return HopAnswer{}, err
	} else if ok {
		switch {
		case o.From != h.From || o.To != h.To:
			return fail("block %s used other relay key here", h.Block)
		case last && o.State == "delivered":
			return HopAnswer{Delivered: true}, nil
		case !last && o.State == "received":
			r.mu.Lock()
			next := r.onward[h.Block]
			r.mu.Unlock()
			if next == nil {
				return fail("block %s was received by an earlier leader: outcome unknown", h.Block)
			}
			return r.pass(ctx, next), nil
		default:
			return fail("block %s is %s here", h.Block, o.State)
		}
	}
	key, err := r.cfg.Store.RelayKey(ctx, from, dir, h.From, h.To)
	if err != nil {
		return fail("relay key with %s: %v", from, err)
	}
	bits, err := h.open(key)
	clear(key)
	if err != nil {
		r.log.Warn("relay hop refused", "from", from, "block", h.Block, "err", err)
		return fail("%v", err)
	}
	defer clear(bits)
	if last {
		c, err := r.cfg.Store.Connection(ctx, h.Master, h.Slave)
		switch {
		case err != nil:
			return fail("connection %s|%s: %v", h.Master, h.Slave, err)
		case c.SourceKME != h.Route[0] || c.TargetKME != r.cfg.Local:
			return fail("connection %s|%s joins %s and %s", h.Master, h.Slave, c.SourceKME, c.TargetKME)
		}
		if err := r.cfg.Store.RelayDeliver(ctx, u, c.ID(), bits); err != nil {
			return fail("deliver: %v", err)
		}
		r.mu.Lock()
		r.stats.Received++
		r.mu.Unlock()
		r.log.Info("relayed block delivered", "block", h.Block, "connection", c.ID(), "bits", 8*len(bits), "route", h.Route)
		return HopAnswer{Delivered: true}, nil
	}
	next := h.Route[h.Index+1]
	if !r.direct(next) {
		return fail("no QKD link to %s", next)
	}
	if err := r.onwardKey(ctx, next, keyBytes(len(bits))); err != nil {
		return fail("onward to %s: %v", next, err)
	}
	if err := r.cfg.Store.RelayReceive(ctx, u); err != nil {
		return fail("receive: %v", err)
	}
	on := &Hop{Block: h.Block, Master: h.Master, Slave: h.Slave, Route: h.Route, Index: h.Index + 1}
	if err := r.allocate(ctx, on, bits, func(u raftstore.RelayUse) error { return r.cfg.Store.RelaySend(ctx, u) }); err != nil {
		return fail("onward to %s: %v", next, err)
	}
	r.mu.Lock()
	r.onward[h.Block] = on
	if len(r.onward) > 1024 { // retries come within seconds; forget the rest
		for b := range r.onward {
			if b != h.Block {
				delete(r.onward, b)
				break
			}
		}
	}
	r.stats.Forwarded++
	r.mu.Unlock()
	return r.pass(ctx, on), nil
}

// onwardKey waits, up to half a hop's time, until the relay key to next
// holds need bytes: the link to next makes relay key as it goes, and the
// source chose the block's size from its own first hop.
func (r *Relay) onwardKey(ctx context.Context, next string, need uint64) error {
	dir := raftstore.RelayDir(r.cfg.Local, next)
	wait := time.NewTimer(r.cfg.HopTimeout / 2)
	defer wait.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st := r.cfg.Store.RelayStreams(next)[dir]
		if st.Available() >= need {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wait.C:
			return fmt.Errorf("%w: %d bytes of relay key to %s left, %d needed", raftstore.ErrInsufficientKeys, st.Available(), next, need)
		case <-tick.C:
		}
	}
}

// allocate picks the next relay key range to send h to its next site,
// seals bits into h and commits the consumption with commit (before the
// block leaves this site).
func (r *Relay) allocate(ctx context.Context, h *Hop, bits []byte, commit func(raftstore.RelayUse) error) error {
	next := h.Route[h.Index]
	dir := raftstore.RelayDir(r.cfg.Local, next)
	r.alloc.Lock()
	defer r.alloc.Unlock()
	st := r.cfg.Store.RelayStreams(next)[dir]
	from, to := st.Used, st.Used+keyBytes(len(bits))
	if to-from > st.Available() {
		return fmt.Errorf("%w: %d bytes of relay key to %s left, %d needed", raftstore.ErrInsufficientKeys, st.Available(), next, to-from)
	}
	key, err := r.cfg.Store.RelayKey(ctx, next, dir, from, to)
	if err != nil {
		return err
	}
	defer clear(key)
	h.From, h.To = from, to
	h.seal(bits, key)
	return commit(raftstore.RelayUse{Peer: next, Dir: dir, BlockID: h.Block, From: from, To: to})
}

// pass sends h to its next site and returns the answer; a call that fails
// is answered as failed at that site.
func (r *Relay) pass(ctx context.Context, h *Hop) HopAnswer {
	next := h.Route[h.Index]
	cctx, cancel := context.WithTimeout(ctx, r.cfg.HopTimeout)
	defer cancel()
	var ans HopAnswer
	if err := r.cfg.Call(cctx, next, OpHop, h, &ans); err != nil {
		return HopAnswer{FailedAt: next, Reason: err.Error()}
	}
	return ans
}

// HandleBurn burns a relayed block at its destination, asked by the
// block's source site.
func (r *Relay) HandleBurn(ctx context.Context, from string, b BurnArgs) error {
	c, err := r.cfg.Store.Connection(ctx, b.Master, b.Slave)
	if err != nil {
		return err
	}
	if c.SourceKME != from || c.TargetKME != r.cfg.Local {
		return fmt.Errorf("%w: %s may not burn blocks of %s", etsi.ErrBadRequest, from, c.ID())
	}
	if err := r.cfg.Store.RelayDiscard(ctx, c.ID(), b.Block); err != nil {
		return err
	}
	r.log.Warn("relayed block burned at the source's request", "block", b.Block, "connection", c.ID(), "source", from)
	return nil
}

// ---- the duty (leader) ----

// Run fills this site's connections to sites without a direct link, and
// polls every site's links, until ctx ends (leadership lost).
func (r *Relay) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	busy := map[string]bool{}
	var bmu sync.Mutex
	tick := time.NewTicker(r.cfg.Poll / 4)
	defer tick.Stop()
	lastPoll := time.Time{}
	for {
		if time.Since(lastPoll) >= r.cfg.Poll {
			lastPoll = time.Now()
			wg.Add(1)
			go func() { defer wg.Done(); r.poll(ctx) }()
		}
		conns, err := r.cfg.Store.Connections(ctx)
		if err == nil {
			for _, c := range conns {
				if c.SourceKME != r.cfg.Local || r.direct(c.TargetKME) || !slices.Contains(r.cfg.Sites, c.TargetKME) {
					continue
				}
				if c.RelayPending == "" && (c.MaxKeyCount == 0 || c.StoredKeys >= int64(c.MaxKeyCount)) {
					continue
				}
				bmu.Lock()
				if busy[c.ID()] {
					bmu.Unlock()
					continue
				}
				busy[c.ID()] = true
				bmu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					r.fillAll(ctx, c)
					bmu.Lock()
					delete(busy, c.ID())
					bmu.Unlock()
				}()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// poll asks every other site for its links.
func (r *Relay) poll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, site := range r.cfg.Sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, r.cfg.Poll)
			defer cancel()
			var rep SiteReport
			if err := r.cfg.Call(cctx, site, OpState, struct{}{}, &rep); err != nil || rep.KME != site {
				return
			}
			r.mu.Lock()
			r.reports[site] = report{SiteReport: rep, at: time.Now()}
			r.mu.Unlock()
		}()
	}
	wg.Wait()
}

// route is the widest route to dst from the fresh reports.
func (r *Relay) route(dst string) (Route, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	reps := map[string]SiteReport{r.cfg.Local: r.LocalReport()}
	for id, rep := range r.reports {
		if now.Sub(rep.at) <= 4*r.cfg.Poll {
			reps[id] = rep.SiteReport
		}
	}
	avoid := map[string]bool{}
	for id, until := range r.avoid {
		if now.Before(until) && id != dst {
			avoid[id] = true
		}
	}
	rt, ok := WidestPath(reps, r.cfg.Local, dst, avoid)
	if ok {
		r.routes[dst] = rt
	} else {
		delete(r.routes, dst)
	}
	return rt, ok
}

// fillAll relays blocks to connection c, one after the other (the two
// pools must receive them in the same order), while it needs key and
// blocks get through.
func (r *Relay) fillAll(ctx context.Context, c raftstore.ConnectionStatus) {
	for ctx.Err() == nil && r.fill(ctx, c) {
		var err error
		if c, err = r.cfg.Store.Connection(ctx, c.MasterSAE, c.SlaveSAE); err != nil {
			return
		}
		if c.RelayPending == "" && (c.MaxKeyCount == 0 || c.StoredKeys >= int64(c.MaxKeyCount)) {
			return
		}
	}
}

// fill relays one block to connection c (or first resolves the block an
// earlier leader left on its way); false when nothing was delivered.
func (r *Relay) fill(ctx context.Context, c raftstore.ConnectionStatus) bool {
	if c.RelayPending != "" {
		return r.burn(ctx, c, c.RelayPending, "left on its way by an earlier leader")
	}
	rt, ok := r.route(c.TargetKME)
	if !ok {
		return false
	}
	// The block takes what the first hop holds now and the later hops held
	// at their last report (up to a poll old: an intermediate site waits a
	// little for its onward relay key, onwardKey).
	width := min(rt.Width, r.cfg.Store.RelayStreams(rt.Path[1])[raftstore.RelayDir(r.cfg.Local, rt.Path[1])].Available())
	if width <= tagKeyBytes {
		return false
	}
	n := int(min(uint64(maxBlockBytes), width-tagKeyBytes))
	if need := c.NeedBytes(); need < n {
		n = need
	}
	if n < (c.KeySize+7)/8 {
		return false // the route cannot carry one key yet
	}
	start := time.Now()
	bits := make([]byte, n)
	defer clear(bits)
	id := make([]byte, 16)
	if _, err := rand.Read(bits); err != nil {
		return false
	}
	if _, err := rand.Read(id); err != nil {
		return false
	}
	block := "relay-" + hex.EncodeToString(id)
	h := &Hop{Block: block, Master: c.MasterSAE, Slave: c.SlaveSAE, Route: rt.Path, Index: 1}
	err := r.allocate(ctx, h, bits, func(u raftstore.RelayUse) error { return r.cfg.Store.RelayStart(ctx, u, c.ID(), bits) })
	if err != nil {
		r.log.Warn("relay not started", "connection", c.ID(), "route", rt.Path, "err", err)
		return false
	}
	ans := r.pass(ctx, h)
	if !ans.Delivered {
		r.log.Warn("relayed block not delivered", "connection", c.ID(), "block", block, "route", rt.Path,
			"failed_at", ans.FailedAt, "reason", ans.Reason)
		if ans.FailedAt != "" && ans.FailedAt != c.TargetKME {
			r.mu.Lock()
			r.avoid[ans.FailedAt] = time.Now().Add(5 * time.Second)
			r.mu.Unlock()
		}
		r.burn(ctx, c, block, "not delivered")
		return false
	}
	if err := r.cfg.Store.RelayDone(ctx, c.ID(), block, int64(keyBytes(n))*int64(len(rt.Path)-1)); err != nil {
		// Still pending in the log: the next leader (or the next round)
		// burns it at both ends.
		r.log.Warn("relayed block delivered but not added here", "connection", c.ID(), "block", block, "err", err)
		return false
	}
	r.mu.Lock()
	r.stats.Delivered++
	r.stats.DeliveredBits += int64(8 * n)
	if len(r.lat) < latWindow {
		r.lat = append(r.lat, time.Since(start).Seconds())
	} else {
		r.lat[r.latNext] = time.Since(start).Seconds()
		r.latNext = (r.latNext + 1) % latWindow
	}
	r.mu.Unlock()
	r.log.Info("relayed block committed", "connection", c.ID(), "block", block, "bits", 8*n, "route", rt.Path,
		"seconds", time.Since(start).Seconds())
	return true
}

// burn ends a relayed block whose outcome is not "delivered and added
// here": burned at the destination first (so it can never be used there),
// then dropped here. If the destination cannot be reached the block stays
// pending and the next round tries again.
func (r *Relay) burn(ctx context.Context, c raftstore.ConnectionStatus, block, why string) bool {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.HopTimeout)
	defer cancel()
	if err := r.cfg.Call(cctx, c.TargetKME, OpBurn, BurnArgs{Master: c.MasterSAE, Slave: c.SlaveSAE, Block: block}, &struct{}{}); err != nil {
		r.log.Warn("relayed block not burned at the destination yet", "connection", c.ID(), "block", block, "err", err)
		return false
	}
	if err := r.cfg.Store.RelayDiscard(ctx, c.ID(), block); err != nil && !errors.Is(err, context.Canceled) {
		r.log.Warn("relayed block not burned here yet", "connection", c.ID(), "block", block, "err", err)
		return false
	}
	r.mu.Lock()
	r.stats.Burned++
	r.mu.Unlock()
	r.log.Warn("relayed block burned", "connection", c.ID(), "block", block, "why", why)
	return true
}

// ---- status ----

// Status is the relay as this node sees it (network status).
type Status struct {
	KME     string           `json:"kme"`
	Leader  bool             `json:"leader"`
	Sites   []SiteStatus     `json:"sites"`
	Routes  map[string]Route `json:"routes"`
	Avoided []string         `json:"avoided,omitempty"`
	Stats   Stats            `json:"stats"`
	// Connections are this site's relayed connections (source here, no
	// direct link to the target): the counts the log keeps for them.
	Connections []ConnRelay `json:"connections,omitempty"`
}

// ConnRelay is a relayed connection's counts at its source site.
type ConnRelay struct {
	Master  string                `json:"master"`
	Slave   string                `json:"slave"`
	Target  string                `json:"target"`
	Pending string                `json:"pending,omitempty"`
	Relay   raftstore.RelayCounts `json:"relay"`
}

// SiteStatus is a site's last report and its age.
type SiteStatus struct {
	SiteReport
	AgeSeconds float64 `json:"age_seconds"` // -1: never answered
}

// Status reports the sites' links, the routes to every site without a
// direct link, and the counts.
func (r *Relay) Status(ctx context.Context) Status {
	st := Status{KME: r.cfg.Local, Routes: map[string]Route{}}
	if conns, err := r.cfg.Store.Connections(ctx); err == nil {
		for _, c := range conns {
			if c.SourceKME == r.cfg.Local && !r.direct(c.TargetKME) {
				st.Connections = append(st.Connections, ConnRelay{Master: c.MasterSAE, Slave: c.SlaveSAE, Target: c.TargetKME,
					Pending: c.RelayPending, Relay: c.Relay})
			}
		}
	}
	for _, site := range r.cfg.Sites {
		if !r.direct(site) {
			if rt, ok := r.route(site); ok {
				st.Routes[site] = rt
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	st.Sites = append(st.Sites, SiteStatus{SiteReport: r.LocalReport()})
	for _, site := range r.cfg.Sites {
		rep, ok := r.reports[site]
		ss := SiteStatus{SiteReport: SiteReport{KME: site}, AgeSeconds: -1}
		if ok {
			ss = SiteStatus{SiteReport: rep.SiteReport, AgeSeconds: now.Sub(rep.at).Seconds()}
		}
		st.Sites = append(st.Sites, ss)
	}
	for id, until := range r.avoid {
		if now.Before(until) {
			st.Avoided = append(st.Avoided, id)
		}
	}
	slices.Sort(st.Avoided)
	st.Stats = r.stats
	if len(r.lat) > 0 {
		lat := slices.Clone(r.lat)
		slices.Sort(lat)
		st.Stats.P50Seconds = lat[len(lat)/2]
		st.Stats.P99Seconds = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return st
}
