package link

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"

	"qkdkms/plugins/testenv"
	"qkdkms/quantum/auth"
	"qkdkms/raftstore"
)

// checkAgree: both sites hold the same blocks of every connection (IDs and
// bits, in the same order), the same last link block and the same pad
// stream.
func checkAgree(t *testing.T, p *pair) {
	t.Helper()
	for _, c := range p.opts.conns {
		a, b := p.sa.blocks(c.ID()), p.sb.blocks(c.ID())
		if len(a) != len(b) {
			t.Errorf("%s: %d blocks at %s, %d at %s", c.ID(), len(a), siteA, len(b), siteB)
		}
		for i := range min(len(a), len(b)) {
			if a[i].id != b[i].id || !bytes.Equal(a[i].bits, b[i].bits) {
				t.Errorf("%s: block %d differs: %s (%d bytes) at %s, %s (%d bytes) at %s", c.ID(), i,
					a[i].id, len(a[i].bits), siteA, b[i].id, len(b[i].bits), siteB)
			}
		}
		if sa, sb := p.sa.status(c.ID()), p.sb.status(c.ID()); sa.StoredBits != sb.StoredBits {
			t.Errorf("%s: %d bits stored at %s, %d at %s", c.ID(), sa.StoredBits, siteA, sb.StoredBits, siteB)
		}
	}
	la, _ := p.sa.LinkState(context.Background(), siteB)
	lb, _ := p.sb.LinkState(context.Background(), siteA)
	if la.LastBlock != lb.LastBlock {
		t.Errorf("last link block %q at %s, %q at %s", la.LastBlock, siteA, lb.LastBlock, siteB)
	}
	p.sa.mu.Lock()
	sta := bytes.Clone(p.sa.link(siteB).stream)
	p.sa.mu.Unlock()
	p.sb.mu.Lock()
	stb := bytes.Clone(p.sb.link(siteA).stream)
	p.sb.mu.Unlock()
	if !bytes.Equal(sta, stb) {
		t.Errorf("pad streams differ: %d bytes at %s, %d at %s", len(sta), siteA, len(stb), siteB)
	}
}

// checkCommitOrder: every block reaches the master site's store only after
// the slave site's store committed it, each site stores a block at most
// once, and a block's commit starts only after the previous block's commit
// ended at both sites.
func checkCommitOrder(t *testing.T, p *pair) {
	t.Helper()
	slaveOf := map[string]string{}
	for _, c := range p.opts.conns {
		slaveOf[c.ID()] = c.TargetKME
	}
	slaveOf[""] = siteB // relay-only blocks: the site that plays Bob commits first
	type commit struct {
		slave, master []addEvent
		first, last   int
	}
	byBlock := map[string]*commit{}
	var order []string
	for _, e := range p.rec.snapshot() {
		c := byBlock[e.block]
		if c == nil {
			c = &commit{first: e.start}
			byBlock[e.block] = c
			order = append(order, e.block)
		}
		if e.site == slaveOf[e.conn] {
			c.slave = append(c.slave, e)
		} else {
			c.master = append(c.master, e)
		}
		c.last = max(c.last, e.end)
		if e.end == 0 {
			t.Errorf("AddBlock of %s at %s never returned", e.block, e.site)
		}
	}
	sort.Slice(order, func(i, j int) bool { return byBlock[order[i]].first < byBlock[order[j]].first })
	for i, id := range order {
		c := byBlock[id]
		if len(c.slave) != 1 || len(c.master) > 1 {
			t.Errorf("block %s: %d AddBlock calls at the slave site, %d at the master site", id, len(c.slave), len(c.master))
			continue
		}
		if len(c.master) == 1 {
			s, m := c.slave[0], c.master[0]
			if s.err != nil {
				t.Errorf("block %s: the master site stored it although the slave site failed: %v", id, s.err)
			}
			if s.end > m.start {
				t.Errorf("block %s: master site's AddBlock (#%d) started before the slave site's ended (#%d)", id, m.start, s.end)
			}
		}
		if i > 0 {
			prev := byBlock[order[i-1]]
			if c.first < prev.last {
				t.Errorf("block %s's commit started (#%d) before block %s's ended (#%d)", id, c.first, order[i-1], prev.last)
			}
		}
	}
}

// checkCarries: a session finishes a frame run ahead (its start names it)
// only when both sites named that frame in the session before it on the
// same connection, which got as far as its commit message; the session's
// block is that frame; a connection's first session finishes none. It
// returns how many sessions finished a frame run ahead.
func checkCarries(t *testing.T, p *pair) int {
	t.Helper()
	type session struct {
		started   bool
		ahead     map[string]string // by site
		committed bool
		carry     string
	}
	conns := map[int]*session{}
	carried := 0
	for _, m := range p.wire.messages() {
		s := conns[m.conn]
		if s == nil {
			s = &session{ahead: map[string]string{}}
			conns[m.conn] = s
		}
		switch m.m.Type {
		case "start":
			if c := m.m.Carry; c != "" {
				carried++
				switch {
				case !s.started:
					t.Errorf("connection %d: its first session finishes frame %s", m.conn, c)
				case !s.committed || s.ahead[siteA] != c || s.ahead[siteB] != c:
					t.Errorf("connection %d: a session finishes frame %s; the session before named %v ahead, committed %v", m.conn, c, s.ahead, s.committed)
				}
			}
			*s = session{started: true, ahead: map[string]string{}, carry: m.m.Carry}
		case "ahead":
			s.ahead[m.from] = m.m.BlockID
		case "commit":
			if s.carry != "" && m.m.BlockID != s.carry {
				t.Errorf("connection %d: a session that finishes frame %s commits block %s", m.conn, s.carry, m.m.BlockID)
			}
			s.committed = true
		}
	}
	return carried
}

// checkNoOverfill: no AddBlock left a pool above max_key_count.
func checkNoOverfill(t *testing.T, p *pair) {
	t.Helper()
	for _, s := range []*fakeStore{p.sa, p.sb} {
		s.mu.Lock()
		for _, o := range s.overfull {
			t.Errorf("%s: %s", s.site, o)
		}
		s.mu.Unlock()
	}
}

// full reports whether every connection's pool holds max_key_count keys at
// both sites.
func (p *pair) full() bool {
	for _, c := range p.opts.conns {
		for _, s := range []*fakeStore{p.sa, p.sb} {
			if st := s.status(c.ID()); st.StoredKeys < int64(st.MaxKeyCount) {
				return false
			}
		}
	}
	return true
}

// helloVersions returns the versions the hellos of connection conn carried
// (as the peer received them), by sending site.
func (p *pair) helloVersions(conn int) map[string]int {
	out := map[string]int{}
	for _, m := range p.wire.messages() {
		if m.conn == conn && m.m.Type == "hello" {
			out[m.from] = m.m.Version
		}
	}
	return out
}

// TestBlocksFlow: sessions fill the pools until max_key_count; both sites
// end with the same blocks in the same order, each block stored at the
// slave site (the connection's target KME) before the master site, and no
// pool ever above max_key_count, whichever site is the slave.
func TestBlocksFlow(t *testing.T) {
	cases := []struct {
		name  string
		conns []raftstore.Connection
	}{
		{"slave site plays Bob", []raftstore.Connection{connection("sae-1", siteB, 30)}},
		{"slave site plays Alice", []raftstore.Connection{connection("sae-2", siteA, 30)}},
		{"both directions", []raftstore.Connection{connection("sae-1", siteB, 20), connection("sae-2", siteA, 20)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, pairOpts{conns: tc.conns})
			p.start()
			testenv.WaitFor(t, "every pool full at both sites", p.full)
			p.stop()
			checkAgree(t, p)
			checkCommitOrder(t, p)
			checkNoOverfill(t, p)
			for _, c := range tc.conns {
				if n := len(p.sa.blocks(c.ID())); n < 2 {
					t.Errorf("%s filled by %d block(s); the test wants several sessions per pool", c.ID(), n)
				}
				for _, s := range []*fakeStore{p.sa, p.sb} {
					if got := s.status(c.ID()).StoredKeys; got != int64(c.MaxKeyCount) {
						t.Errorf("%s at %s: %d keys, want exactly max_key_count %d", c.ID(), s.site, got, c.MaxKeyCount)
					}
				}
			}
			for _, e := range p.rec.snapshot() {
				if e.err != nil {
					t.Errorf("AddBlock of %s at %s failed: %v", e.block, e.site, e.err)
				}
			}
			if v := p.helloVersions(1); v[siteA] != protocolVersion || v[siteB] != protocolVersion {
				t.Errorf("hello versions %v, want %d both ways", v, protocolVersion)
			}
			if p.wire.count(kindCommit) == 0 {
				t.Error("protocol 2 sent no message on the commit queue")
			}
			if n := checkCarries(t, p); n == 0 {
				t.Error("no session finished a frame run ahead (protocol 4)")
			}
			if st := p.a.Status(); st.CommittedBits == 0 || st.Sessions < 2 {
				t.Errorf("Alice's status after filling the pools: %d sessions, %d bits", st.Sessions, st.CommittedBits)
			}
		})
	}
}

// TestCommitOverlapsNextSession: under protocol 2, while the master site's
// store holds block 1's commit, session 2 runs to its end (Alice sends its
// commit message); block 2's commit starts only after block 1's ended; and
// session 2, picked while block 1 was in flight, counts block 1 into the
// pool: with room left for two keys past block 1, block 2 is clipped and no
// pool ever exceeds max_key_count.
func TestCommitOverlapsNextSession(t *testing.T) {
	// Master site A (Alice), slave site B.
	c := connection("sae-1", siteB, 1<<20)
	p := newPair(t, pairOpts{conns: []raftstore.Connection{c}})
	var (
		mu        sync.Mutex
		held      string // block 1
		next      string // the block whose commit message Alice sent while block 1 was held
		waitedErr error
		maxKeys   int // max_key_count once block 1's size is known
	)
	commitMsgs := func() []linkMsg {
		var out []linkMsg
		for _, m := range p.wire.messages() {
			if m.from == siteA && m.m.Type == "commit" {
				out = append(out, m.m)
			}
		}
		return out
	}
	// Session 2's pick (Alice's first look at the pools after block 1's
	// commit message) comes while block 1 is held at the master site: the
	// operator lowers max_key_count to two keys past block 1.
	p.sa.setOnConnections(func() {
		mu.Lock()
		defer mu.Unlock()
		if cm := commitMsgs(); maxKeys == 0 && len(cm) == 1 {
			maxKeys = cm[0].KeyBytes*8/c.KeySize + 2
			p.sa.setMaxKeys(c.ID(), maxKeys)
			p.sb.setMaxKeys(c.ID(), maxKeys)
		}
	})
	p.sa.setFault(func(ctx context.Context, call int, b raftstore.Block) error {
		if call != 1 {
			return nil
		}
		err := testenv.Until(ctx, "Alice's commit message of the session after "+b.BlockID, func() bool {
			for _, m := range commitMsgs() {
				if m.BlockID != b.BlockID {
					mu.Lock()
					next = m.BlockID
					mu.Unlock()
					return true
				}
			}
			return false
		})
		mu.Lock()
		held, waitedErr = b.BlockID, err
		mu.Unlock()
		return err
	})
	p.start()
	testenv.WaitFor(t, "the pool full at both sites", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return waitedErr != nil || maxKeys > 0 && p.full()
	})
	p.stop()

	mu.Lock()
	defer mu.Unlock()
	if waitedErr != nil {
		t.Fatalf("session 2 did not run while block 1's commit was held: %v", waitedErr)
	}
	blocks := p.sa.blocks(c.ID())
	if len(blocks) < 2 || blocks[0].id != held || blocks[1].id != next {
		ids := make([]string, len(blocks))
		for i, b := range blocks {
			ids[i] = b.id
		}
		t.Fatalf("blocks at the master site %v, want the held block %s then the overlapping session's %s", ids, held, next)
	}
	// Block 2's commit began at the slave site only after the master site's
	// AddBlock of block 1 returned.
	var masterEnd1, slaveStart2 int
	for _, e := range p.rec.snapshot() {
		if e.block == held && e.site == siteA {
			masterEnd1 = e.end
		}
		if e.block == next && e.site == siteB {
			slaveStart2 = e.start
		}
	}
	if slaveStart2 < masterEnd1 {
		t.Errorf("block 2's commit started at the slave site (#%d) before block 1's ended at the master site (#%d)", slaveStart2, masterEnd1)
	}
	if room := maxKeys*c.KeySize/8 - len(blocks[0].bits); len(blocks[1].bits) > room {
		t.Errorf("block 2 holds %d bytes, but only %d fit beside block 1 in flight", len(blocks[1].bits), room)
	}
	checkAgree(t, p)
	checkCommitOrder(t, p)
	checkNoOverfill(t, p)
	if p.connections() != 1 {
		t.Errorf("%d connections, want 1 (holding a commit must not break the link)", p.connections())
	}
}

// TestFailedCommit: a slave-site commit that fails adds nothing at the
// master site; a master-site commit that fails after the slave site's
// leaves the slave site one block ahead, and the next connection drops
// exactly that block there. Either way both sites agree afterwards and keys
// keep flowing.
func TestFailedCommit(t *testing.T) {
	errInjected := errors.New("injected store failure")
	cases := []struct {
		name        string
		slaveSite   string
		failAtSlave bool
	}{
		{"slave site Bob fails", siteB, true},
		{"slave site Alice fails", siteA, true},
		{"master site Alice fails", siteB, false},
		{"master site Bob fails", siteA, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A pool of a few blocks: the test ends with it full, when no
			// commit is in flight that would leave the slave site one block
			// ahead until the next connection.
			c := connection("sae-1", tc.slaveSite, 48)
			p := newPair(t, pairOpts{conns: []raftstore.Connection{c}})
			slave, master := p.store(tc.slaveSite), p.store(siteA)
			if tc.slaveSite == siteA {
				master = p.sb
			}
			failing := master
			if tc.failAtSlave {
				failing = slave
			}
			var (
				mu     sync.Mutex
				failed string
			)
			failing.setFault(func(_ context.Context, call int, b raftstore.Block) error {
				if call != 2 {
					return nil
				}
				mu.Lock()
				failed = b.BlockID
				mu.Unlock()
				return errInjected
			})
			p.start()
			testenv.WaitFor(t, "the pool full at both sites", p.full)
			p.stop()
			mu.Lock()
			defer mu.Unlock()
			if failed == "" {
				t.Fatal("the fault never fired")
			}
			// Block 2 failed; the link reconnected and stored more.
			if n := p.committed(c.ID()); n < 3 {
				t.Errorf("%d blocks after the failed one's reconnect, want at least 3", n)
			}
			for _, s := range []*fakeStore{p.sa, p.sb} {
				for _, b := range s.blocks(c.ID()) {
					if b.id == failed {
						t.Errorf("%s still holds the failed block %s", s.site, failed)
					}
				}
			}
			for _, e := range p.rec.snapshot() {
				if tc.failAtSlave && e.block == failed && e.site != tc.slaveSite {
					t.Errorf("the master site %s was asked to store block %s the slave site failed to commit", e.site, failed)
				}
			}
			wantDrops := map[*fakeStore][]string{}
			if !tc.failAtSlave {
				wantDrops[slave] = []string{failed}
			}
			for _, s := range []*fakeStore{p.sa, p.sb} {
				if got := s.dropped(); fmt.Sprint(got) != fmt.Sprint(wantDrops[s]) {
					t.Errorf("%s dropped %v, want %v", s.site, got, wantDrops[s])
				}
			}
			if p.connections() < 2 {
				t.Errorf("%d connection(s): a failed commit should end the connection", p.connections())
			}
			checkAgree(t, p)
			checkCommitOrder(t, p)
			checkCarries(t, p)
		})
	}
}

// sessionOffsets returns, for every session that got as far as Alice's
// commit message, the pad offset both sites used: the larger of the start
// and ready offers.
func (p *pair) sessionOffsets() []uint64 {
	var out []uint64
	var start, ready uint64
	for _, m := range p.wire.messages() {
		switch m.m.Type {
		case "start":
			start, ready = m.m.PadOffset, 0
		case "ready":
			ready = m.m.PadOffset
		case "commit":
			out = append(out, max(start, ready))
		}
	}
	return out
}

// TestPadsNeverReused: across forced reconnects (the connection cut from
// outside), every session's pads start past the previous session's, and no
// byte of the pad stream is read twice at either site, both with a
// plentiful PSK (reservations run ahead) and with a PSK holding one
// session's pads only (every later session's pads come from earlier
// sessions' keys, perhaps still in flight).
func TestPadsNeverReused(t *testing.T) {
	cases := []struct {
		name      string
		pskPads   int
		blockBits int
	}{
		{"plentiful PSK", 64 << 10, 0},
		// Each block must bring a session's pads back (AuthReserveBytes,
		// 64 bytes): a 30,000-bit block's final key was once only 22
		// bytes, after which no session had pads (correctly: the link
		// is out of authentication key). Larger blocks make that remote.
		{"PSK for one session", 2 * auth.PadSize, 80_000},
	}
	const cuts = 3
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := connection("sae-1", siteB, 1<<20)
			p := newPair(t, pairOpts{conns: []raftstore.Connection{c}, pskPads: tc.pskPads, blockBits: tc.blockBits})
			p.start()
			for i := 1; i <= cuts; i++ {
				p.waitBlocks(c.ID(), i+1)
				p.cut()
				testenv.WaitFor(t, fmt.Sprintf("connection %d", i+1), func() bool { return p.connections() > i })
			}
			p.waitBlocks(c.ID(), cuts+3)
			p.stop()

			offs := p.sessionOffsets()
			if len(offs) < cuts+3 {
				t.Fatalf("saw %d sessions' pad offsets, want ≥ %d", len(offs), cuts+3)
			}
			for i := 1; i < len(offs); i++ {
				if offs[i] < offs[i-1]+2*auth.PadSize {
					t.Errorf("session %d used pads at %d, overlapping session %d's at %d", i+1, offs[i], i, offs[i-1])
				}
			}
			for _, s := range []*fakeStore{p.sa, p.sb} {
				reads := s.reads()
				sort.Slice(reads, func(i, j int) bool { return reads[i][0] < reads[j][0] })
				for i := 1; i < len(reads); i++ {
					if reads[i][0] < reads[i-1][1] {
						t.Errorf("%s read pad stream bytes [%d,%d) and [%d,%d)", s.site, reads[i-1][0], reads[i-1][1], reads[i][0], reads[i][1])
					}
				}
				if tc.pskPads == 2*auth.PadSize && len(reads) < len(offs)-1 {
					t.Errorf("%s read the pad stream %d times for %d sessions past the PSK's", s.site, len(reads), len(offs)-1)
				}
			}
			if p.connections() < cuts+1 {
				t.Errorf("%d connections, want ≥ %d", p.connections(), cuts+1)
			}
			checkAgree(t, p)
			checkCommitOrder(t, p)
			checkCarries(t, p)
		})
	}
}

// TestProtocol1Fallback: when neither hello carries a version (an old peer),
// both sites speak protocol 1: nothing travels on the commit queue, and
// blocks still flow, slave site first, identical at both sites.
func TestProtocol1Fallback(t *testing.T) {
	conns := []raftstore.Connection{connection("sae-1", siteB, 20), connection("sae-2", siteA, 20)}
	p := newPair(t, pairOpts{conns: conns, protocol1: true})
	p.start()
	testenv.WaitFor(t, "every pool full at both sites", p.full)
	p.stop()
	if v := p.helloVersions(1); len(v) != 2 || v[siteA] != 0 || v[siteB] != 0 {
		t.Fatalf("hello versions as received %v, want none both ways", v)
	}
	if n := p.wire.count(kindCommit); n != 0 {
		t.Errorf("%d messages on the commit queue under protocol 1", n)
	}
	checkAgree(t, p)
	checkCommitOrder(t, p)
	checkNoOverfill(t, p)
	for _, c := range conns {
		if n := len(p.sa.blocks(c.ID())); n < 2 {
			t.Errorf("%s filled by %d block(s)", c.ID(), n)
		}
	}
}

// TestProtocol3NoFramesAhead: with a peer that speaks protocol 3, no frame
// runs ahead (no start finishes one, no "ahead" message) and blocks flow,
// identical at both sites.
func TestProtocol3NoFramesAhead(t *testing.T) {
	conns := []raftstore.Connection{connection("sae-1", siteB, 20)}
	p := newPair(t, pairOpts{conns: conns, protocol3: true})
	p.start()
	testenv.WaitFor(t, "the pool full at both sites", p.full)
	p.stop()
	if v := p.helloVersions(1); v[siteA] != 3 || v[siteB] != 3 {
		t.Fatalf("hello versions as received %v, want 3 both ways", v)
	}
	if n := checkCarries(t, p); n != 0 {
		t.Errorf("%d sessions finished a frame run ahead under protocol 3", n)
	}
	for _, m := range p.wire.messages() {
		if m.m.Type == "ahead" {
			t.Fatalf("an ahead message from %s under protocol 3", m.from)
		}
	}
	if n := len(p.sa.blocks(conns[0].ID())); n < 2 {
		t.Errorf("pool filled by %d block(s); the test wants several sessions", n)
	}
	checkAgree(t, p)
	checkCommitOrder(t, p)
	checkNoOverfill(t, p)
}

// TestCarryNotHeldRefused: a start that names a frame Bob does not hold
// (here one the wire changed) is refused at once, before any ready; both
// sites drop the frame they held ahead, the next session runs its own
// frame from the start, and the pool fills with the same blocks at both
// sites.
func TestCarryNotHeldRefused(t *testing.T) {
	c := connection("sae-1", siteB, 40)
	p := newPair(t, pairOpts{conns: []raftstore.Connection{c}})
	p.tamper.Store(true)
	p.start()
	testenv.WaitFor(t, "the pool full at both sites", p.full)
	p.stop()
	if p.tamper.Load() {
		t.Fatal("no start finished a frame run ahead: nothing was tampered with")
	}
	// The tampered start is the first that names a frame; Bob's answer to
	// it, and the start after that.
	var answer *linkMsg
	tampered, after := false, "unseen"
	for _, m := range p.wire.messages() {
		switch {
		case !tampered && m.m.Type == "start" && m.m.Carry != "":
			tampered = true
		case tampered && answer == nil && m.from == siteB:
			answer = &m.m
		case answer != nil && m.m.Type == "start":
			after = m.m.Carry
		}
		if after != "unseen" {
			break
		}
	}
	if answer == nil || answer.Type != "refuse" || !strings.Contains(answer.Reason, "does not hold") {
		t.Fatalf("Bob answered the start naming a frame he does not hold with %+v, want a refusal", answer)
	}
	if after != "" {
		t.Errorf("the start after the refusal finishes frame %q, want none (both sites dropped theirs)", after)
	}
	checkAgree(t, p)
	checkCommitOrder(t, p)
	checkNoOverfill(t, p)
}
