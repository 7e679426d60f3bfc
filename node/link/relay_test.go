package link

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"qkdkms/plugins/testenv"
	"qkdkms/quantum/session"
	"qkdkms/raftstore"
)

// relayAt is the relay key available at a site per direction
// (raftstore.RelayDir order).
func (p *pair) relayAt(site string) [2]int64 {
	s, peer := p.store(site), siteB
	if site == siteB {
		peer = siteA
	}
	var out [2]int64
	for i, r := range s.RelayStreams(peer) {
		out[i] = int64(r.Available())
	}
	return out
}

// relayAtLeast reports whether both directions hold at least n bytes of
// relay key at both sites.
func (p *pair) relayAtLeast(n int64) bool {
	for _, site := range []string{siteA, siteB} {
		for _, lv := range p.relayAt(site) {
			if lv < n {
				return false
			}
		}
	}
	return true
}

// addedAt returns the IDs of the blocks site's store added.
func (p *pair) addedAt(site string) map[string]bool {
	out := map[string]bool{}
	for _, e := range p.rec.snapshot() {
		if e.site == site && e.end > 0 && e.err == nil {
			out[e.block] = true
		}
	}
	return out
}

// commits returns Alice's commit messages and how many starts were
// relay-only.
func (p *pair) commits() (cs []linkMsg, relayOnly int) {
	for _, m := range p.wire.messages() {
		switch {
		case m.from == siteA && m.m.Type == "commit":
			cs = append(cs, m.m)
		case m.from == siteA && m.m.Type == "start" && m.m.RelayOnly:
			relayOnly++
		}
	}
	return cs, relayOnly
}

// pings counts Alice's pings (she pings when no session is due).
func (p *pair) pings() int {
	n := 0
	for _, m := range p.wire.messages() {
		if m.from == siteA && m.m.Type == "ping" {
			n++
		}
	}
	return n
}

// idle waits until Alice has pinged three more times: nothing is due.
func (p *pair) idle() {
	p.t.Helper()
	n := p.pings()
	testenv.WaitFor(p.t, "three more pings (nothing due)", func() bool { return p.pings() >= n+3 })
}

// checkRelayAgree: both sites hold the same relay material, byte for byte,
// in both directions, and the relay streams report it.
func checkRelayAgree(t *testing.T, p *pair) {
	t.Helper()
	ra, rb := p.sa.relayBytes(siteB), p.sb.relayBytes(siteA)
	sa, sb := p.sa.RelayStreams(siteB), p.sb.RelayStreams(siteA)
	for dir := range ra {
		if !bytes.Equal(ra[dir], rb[dir]) {
			t.Errorf("relay direction %d differs: %d bytes at %s, %d at %s", dir, len(ra[dir]), siteA, len(rb[dir]), siteB)
		}
		if sa[dir].Stream != sb[dir].Stream || sa[dir].Stream != uint64(len(ra[dir])) {
			t.Errorf("relay direction %d: streams of %d bytes at %s, %d at %s, %d bytes stored", dir, sa[dir].Stream, siteA, sb[dir].Stream, siteB, len(ra[dir]))
		}
	}
}

// TestRelayFill: a link with a relay pool fills both directions to the
// target and then stops making relay key, by relay-only sessions when no
// connection needs key (none exists, or its pool is full); after relay key
// is consumed in one direction it tops that direction up again, and only
// that one (node/CONFIG.md, "Relay pool"). Relay material is identical at
// both sites.
func TestRelayFill(t *testing.T) {
	const target = 3000
	cases := []struct {
		name  string
		conns []raftstore.Connection
	}{
		{"no connection", nil},
		{"full connection", []raftstore.Connection{connection("sae-1", siteB, 10)}},
		{"connection at the site that plays Alice", []raftstore.Connection{connection("sae-2", siteA, 10)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, pairOpts{conns: tc.conns, relayPool: target, relayShare: 0.5})
			p.start()
			testenv.WaitFor(t, "the relay pool at target in both directions at both sites", func() bool { return p.relayAtLeast(target) })
			testenv.WaitFor(t, "every pool full at both sites", p.full)
			p.idle()
			for _, site := range []string{siteA, siteB} {
				if lv := p.relayAt(site); lv != [2]int64{target, target} {
					t.Errorf("relay at %s: %v, want %d both ways", site, lv, target)
				}
			}
			cs, relayOnly := p.commits()
			if relayOnly < 2 {
				t.Errorf("%d relay-only sessions; the test wants several", relayOnly)
			}
			var relay int
			for _, c := range cs {
				relay += c.Relay
			}
			if relay != 2*target {
				t.Errorf("commit messages carried %d relay bytes, want %d", relay, 2*target)
			}
			// A relay of 1000 bytes from the site whose KME ID sorts
			// first consumes them at both sites; the link tops that
			// direction up.
			dir := raftstore.RelayDir(siteA, siteB)
			p.sa.consumeRelay(siteB, dir, 1000)
			p.sb.consumeRelay(siteA, dir, 1000)
			want := [2]int64{target, target}
			testenv.WaitFor(t, "the relay pool topped up", func() bool { return p.relayAt(siteA) == want && p.relayAt(siteB) == want })
			p.idle()
			var added [2]int
			cs, _ = p.commits()
			for _, c := range cs {
				added[0] += c.RelaySplit
				added[1] += c.Relay - c.RelaySplit
			}
			if wantAdded := [2]int{target, target}; true {
				wantAdded[dir] += 1000
				if added != wantAdded {
					t.Errorf("relay bytes per direction in the commit messages: %v, want %v", added, wantAdded)
				}
			}
			p.stop()
			for _, site := range []string{siteA, siteB} {
				if lv := p.relayAt(site); lv != want {
					t.Errorf("relay at %s after the top-up: %v, want %v", site, lv, want)
				}
			}
			checkRelayAgree(t, p)
			checkAgree(t, p)
			checkCommitOrder(t, p)
			checkNoOverfill(t, p)
			if st := p.a.Status(); st.RelayOut != want[dir] || st.RelayIn != want[1-dir] || st.RelayTarget != target || st.RelayCommitted != 2*target+1000 {
				t.Errorf("Alice's status: relay out %d, in %d, target %d, committed %d", st.RelayOut, st.RelayIn, st.RelayTarget, st.RelayCommitted)
			}
			if st := p.b.Status(); st.RelayOut != want[1-dir] || st.RelayIn != want[dir] {
				t.Errorf("Bob's status: relay out %d, in %d", st.RelayOut, st.RelayIn)
			}
		})
	}
}

// TestRelayShare: while a connection needs key and the relay pool is below
// target, relay_share of each session's key after the pad top-up goes to
// relay (even bytes, rounded down) and the rest to the pool; no session is
// relay-only.
func TestRelayShare(t *testing.T) {
	for _, share := range []float64{0, 0.3, 0.75} {
		t.Run(fmt.Sprint(share), func(t *testing.T) {
			c := connection("sae-1", siteB, 1<<20)
			p := newPair(t, pairOpts{conns: []raftstore.Connection{c}, relayPool: 1 << 30, relayShare: share})
			p.start()
			p.waitBlocks(c.ID(), 4)
			p.stop()
			cs, relayOnly := p.commits()
			if relayOnly != 0 {
				t.Errorf("%d relay-only sessions while a connection needs key", relayOnly)
			}
			// The relay key at Alice's site is what the blocks she stored
			// carried: the test stops the link at any moment, so the last
			// commit message may have no block at her site.
			stored := p.addedAt(siteA)
			var relay int
			for i, m := range cs {
				rest := m.KeyBytes + m.Relay
				if want := int(share * float64(rest)); m.Relay != want || m.Relay-2*m.RelaySplit > 1 || m.Relay-2*m.RelaySplit < 0 {
					t.Errorf("session %d: %d relay bytes of %d (%d to direction 0), want %d, half each way (the odd byte to direction 1; share %v)", i+1, m.Relay, rest, m.RelaySplit, want, share)
				}
				if stored[m.BlockID] {
					relay += m.Relay
				}
			}
			if share > 0 && relay == 0 {
				t.Errorf("no relay bytes with share %v", share)
			}
			checkRelayAgree(t, p)
			checkAgree(t, p)
			checkCommitOrder(t, p)
			if got := p.relayAt(siteA); got[0]+got[1] != int64(relay) {
				t.Errorf("relay at %s: %v, the commit messages carried %d bytes", siteA, got, relay)
			}
		})
	}
}

// TestRelayOff: no relay key is made, and keys flow as before, when the
// peer speaks an older link protocol, when a site's cluster version takes
// no relay material, or when a site's store refuses it at commit
// (raftstore.ErrNotEnabled: that block is lost, the link reconnects
// without relay).
func TestRelayOff(t *testing.T) {
	cases := []struct {
		name             string
		opts             pairOpts
		site             string // whose store takes no relay material
		noRelay, refuse  bool   // by its cluster version; only at commit
		wantHelloVersion int    // as received
	}{
		{name: "protocol 1", opts: pairOpts{protocol1: true}, wantHelloVersion: 0},
		{name: "protocol 2", opts: pairOpts{protocol2: true}, wantHelloVersion: 2},
		{name: "Bob's cluster version", site: siteB, noRelay: true, wantHelloVersion: protocolVersion},
		{name: "Alice's cluster version", site: siteA, noRelay: true, wantHelloVersion: protocolVersion},
		{name: "slave store refuses", site: siteB, refuse: true, wantHelloVersion: protocolVersion},
		{name: "master store refuses", site: siteA, refuse: true, wantHelloVersion: protocolVersion},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := connection("sae-1", siteB, 30)
			tc.opts.conns = []raftstore.Connection{c}
			tc.opts.relayPool, tc.opts.relayShare = 1<<20, 0.5
			p := newPair(t, tc.opts)
			if tc.site != "" {
				s := p.store(tc.site)
				s.noRelay, s.refuseRelay = tc.noRelay, tc.refuse
			}
			p.start()
			testenv.WaitFor(t, "the pool full at both sites", p.full)
			p.idle()
			p.stop()
			for _, site := range []string{siteA, siteB} {
				if lv := p.relayAt(site); lv != [2]int64{} {
					t.Errorf("relay at %s: %v, want none", site, lv)
				}
			}
			cs, relayOnly := p.commits()
			if relayOnly != 0 {
				t.Errorf("%d relay-only sessions", relayOnly)
			}
			withRelay := 0
			for _, m := range cs {
				if m.Relay > 0 {
					withRelay++
				}
			}
			// A refused block fails at commit; the session after it may
			// have sent its commit message already (protocol 2).
			if most := map[bool]int{true: 2}[tc.refuse]; withRelay > most {
				t.Errorf("%d commit messages carried relay bytes, want at most %d", withRelay, most)
			}
			if tc.refuse && withRelay == 0 {
				t.Error("no commit message carried relay bytes: the refusal was not tested")
			}
			if tc.refuse && p.connections() < 2 {
				t.Errorf("%d connection(s): a refused relay block should end the connection", p.connections())
			}
			if v := p.helloVersions(1); v[siteA] != tc.wantHelloVersion || v[siteB] != tc.wantHelloVersion {
				t.Errorf("hello versions as received %v, want %d", v, tc.wantHelloVersion)
			}
			checkRelayAgree(t, p)
			checkAgree(t, p)
			checkCommitOrder(t, p)
			checkNoOverfill(t, p)
		})
	}
}

// TestCheckCommit: Bob fails a session whose commit message splits the key
// wrongly with session.ErrProtocol.
func TestCheckCommit(t *testing.T) {
	v3, v2 := &peerConn{version: 3}, &peerConn{version: 2}
	cases := []struct {
		name      string
		p         *peerConn
		c         msg
		relayOnly bool
		ok        bool
	}{
		{"fits", v3, msg{Auth: 10, KeyBytes: 50, Relay: 40}, false, true},
		{"too long", v3, msg{Auth: 10, KeyBytes: 50, Relay: 42}, false, false},
		{"relay split", v3, msg{KeyBytes: 50, Relay: 3, RelaySplit: 3}, false, true},
		{"relay split beyond the relay bytes", v3, msg{KeyBytes: 50, Relay: 3, RelaySplit: 4}, false, false},
		{"negative relay split", v3, msg{KeyBytes: 50, Relay: 3, RelaySplit: -1}, false, false},
		{"negative relay", v3, msg{KeyBytes: 50, Relay: -2}, false, false},
		{"relay under protocol 2", v2, msg{KeyBytes: 50, Relay: 2}, false, false},
		{"protocol 2 without relay", v2, msg{Auth: 10, KeyBytes: 90}, false, true},
		{"relay-only", v3, msg{Auth: 10, Relay: 90}, true, true},
		{"relay-only with pool bytes", v3, msg{KeyBytes: 2, Relay: 90}, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkCommit(tc.p, tc.c, 100, tc.relayOnly)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, session.ErrProtocol)) {
				t.Errorf("checkCommit = %v, want ok %v (else ErrProtocol)", err, tc.ok)
			}
		})
	}
}

// TestSplit: the pad top-up first, then relay by share (or all of it in a
// relay-only session) up to what the relay pool needs, the pool up to its
// need, and what the pool cannot take to relay; the relay bytes divide
// between the directions in proportion to their shortfalls.
func TestSplit(t *testing.T) {
	l := &Link{cfg: Config{AuthReserveBytes: 64, AuthTargetBytes: 1000, RelayShare: 0.5, PSK: make([]byte, 16)}}
	low := raftstore.LinkState{}                        // no pads left: top up
	plenty := raftstore.LinkState{StreamBytes: 1 << 20} // no top-up
	big := relayNeed{1 << 20, 1 << 20}
	cases := []struct {
		name      string
		key       int
		st        raftstore.LinkState
		need      int
		relay     relayNeed
		relayOnly bool
		want      blockSplit
	}{
		{"no relay", 1000, low, 1 << 20, relayNeed{}, false, blockSplit{64, 936, 0, 0}},
		{"share", 1000, plenty, 1 << 20, big, false, blockSplit{0, 500, 500, 250}},
		{"share after top-up, odd rest", 1001, low, 1 << 20, big, false, blockSplit{64, 469, 468, 234}},
		{"relay need below share", 1000, plenty, 1 << 20, relayNeed{100, 0}, false, blockSplit{0, 900, 100, 100}},
		{"pool takes little, rest to relay", 1000, plenty, 100, big, false, blockSplit{0, 100, 900, 450}},
		{"pool and relay take little", 1000, plenty, 100, relayNeed{100, 200}, false, blockSplit{0, 100, 300, 100}},
		{"relay-only", 1001, low, 0, big, true, blockSplit{64, 0, 937, 468}},
		{"relay-only up to the need", 1000, plenty, 0, relayNeed{0, 300}, true, blockSplit{0, 0, 300, 0}},
		{"relay-only, directions in proportion", 1000, plenty, 0, relayNeed{1000, 3000}, true, blockSplit{0, 0, 1000, 250}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := l.split(tc.key, tc.st, tc.need, tc.relay, tc.relayOnly); got != tc.want {
				t.Errorf("split = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestRelayLearnedFromPong: a peer whose store took no relay material at
// the hello (a fresh site raises its cluster version a moment after its
// election) says so again in its pongs, so an idle link starts relay-only
// sessions once it does, on the same connection.
func TestRelayLearnedFromPong(t *testing.T) {
	p := newPair(t, pairOpts{relayPool: 4096, relayShare: 0.5})
	b := p.store(siteB)
	b.mu.Lock()
	b.noRelay = true
	b.mu.Unlock()
	p.start()
	p.idle()
	if _, n := p.commits(); n != 0 {
		t.Fatalf("%d relay-only sessions while Bob's store took no relay material", n)
	}
	b.mu.Lock()
	b.noRelay = false
	b.mu.Unlock()
	testenv.WaitFor(t, "relay-only sessions", func() bool { _, n := p.commits(); return n > 0 })
	p.idle()
	p.stop()
	if n := p.connections(); n != 1 {
		t.Errorf("%d connections, want the first one throughout", n)
	}
	checkRelayAgree(t, p)
}
