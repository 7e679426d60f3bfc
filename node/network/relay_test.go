package network

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"qkdkms/etsi"
	"qkdkms/plugins/testenv"
	"qkdkms/raftstore"
	"qkdkms/raftstore/storetest"
)

// testNet is sites of one-node stores joined by links with relay key; the
// relays call each other in process (JSON round trip, as over the wire).
type testNet struct {
	t     *testing.T
	sites map[string]*testSite
	mu    sync.Mutex
	down  map[string]bool // sites that do not answer
	// tamper, when set, changes hops before they reach a site.
	tamper func(to string, h *Hop)
}

type testSite struct {
	id    string
	store *raftstore.Store
	relay *Relay
	links []string
}

func newTestNet(t *testing.T, edges ...[2]string) *testNet {
	n := &testNet{t: t, sites: map[string]*testSite{}, down: map[string]bool{}}
	site := func(id string) *testSite {
		if s := n.sites[id]; s != nil {
			return s
		}
		c := storetest.MakeCluster(t, 1, storetest.WithIDPrefix(id), storetest.Quiet())
		s := &testSite{id: id, store: c.Stores[0]}
		testenv.WaitFor(t, id+" at cluster version 4", func() bool { return s.store.ClusterVersion() >= 4 })
		n.sites[id] = s
		return s
	}
	for _, e := range edges {
		a, b := site(e[0]), site(e[1])
		a.links = append(a.links, b.id)
		b.links = append(b.links, a.id)
	}
	for _, s := range n.sites {
		var others []string
		for id := range n.sites {
			if id != s.id {
				others = append(others, id)
			}
		}
		s.relay = New(Config{
			Local: s.id, Sites: others, Store: s.store, Call: n.caller(s.id),
			Links: func() []LinkInfo {
				var out []LinkInfo
				for _, p := range s.links {
					out = append(out, LinkInfo{Peer: p, Up: !n.isDown(p)})
				}
				return out
			},
			HopTimeout: testenv.Scaled(time.Second), Poll: 100 * time.Millisecond,
		})
	}
	return n
}

func (n *testNet) isDown(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.down[id]
}

func (n *testNet) setDown(id string, down bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.down[id] = down
}

func (n *testNet) caller(from string) Caller {
	return func(ctx context.Context, to, op string, in, out any) error {
		if n.isDown(to) || n.isDown(from) {
			return fmt.Errorf("%w: %s does not answer", etsi.ErrUnavailable, to)
		}
		if h, ok := in.(*Hop); ok && n.tamper != nil {
			c := *h
			c.CT = bytes.Clone(h.CT)
			n.tamper(to, &c)
			in = &c
		}
		body, err := json.Marshal(in)
		if err != nil {
			return err
		}
		res, err := n.sites[to].relay.Ops()[op](ctx, from, body)
		if err != nil {
			return err
		}
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, out)
	}
}

// relayKey adds n bytes of relay key per direction to the link a–b at both
// ends (as a link block would).
func (n *testNet) relayKey(a, b string, bytesPerDir int) {
	n.t.Helper()
	bits := make([]byte, 2*bytesPerDir)
	_, _ = rand.Read(bits)
	id := uuid.NewString()
	pad := []byte{1}
	for _, e := range [][2]string{{a, b}, {b, a}} {
		if err := n.sites[e[0]].store.AddBlock(context.Background(), raftstore.Block{BlockID: id, LinkPeer: e[1], RelayBits: bytes.Clone(bits), RelaySplit: bytesPerDir}); err != nil {
			n.t.Fatal(err)
		}
		// A later link block confirms it (RelayStream.Unconfirmed).
		if err := n.sites[e[0]].store.AddBlock(context.Background(), raftstore.Block{BlockID: id + "-next", LinkPeer: e[1], AuthBits: pad}); err != nil {
			n.t.Fatal(err)
		}
	}
}

// connect registers ghi@src → jkl@dst at both ends.
func (n *testNet) connect(src, dst string, keys int) raftstore.Connection {
	n.t.Helper()
	c := raftstore.Connection{SourceKME: src, TargetKME: dst, MasterSAE: "ghi", SlaveSAE: "jkl", KeySize: 256,
		MaxKeyCount: keys, MaxKeyPerRequest: keys}
	for _, id := range []string{src, dst} {
		if err := n.sites[id].store.RegisterConnection(context.Background(), c); err != nil {
			n.t.Fatal(err)
		}
	}
	return c
}

func (n *testNet) run(ids ...string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); n.sites[id].relay.Run(ctx) }()
	}
	n.t.Cleanup(func() { cancel(); wg.Wait() })
}

func (n *testNet) pool(id string, c raftstore.Connection) raftstore.ConnectionStatus {
	n.t.Helper()
	st, err := n.sites[id].store.Connection(context.Background(), c.MasterSAE, c.SlaveSAE)
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

// sameKeys issues every key of the pool at src, records the assignment at
// dst and fetches them there: the bytes must match (I2 end to end).
func (n *testNet) sameKeys(src, dst string, c raftstore.Connection, keys int) {
	n.t.Helper()
	ctx := context.Background()
	ids := make([]string, keys)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	iss, err := n.sites[src].store.IssueKeys(ctx, raftstore.IssueRequest{RequestID: uuid.NewString(), MasterSAE: c.MasterSAE,
		SlaveSAE: c.SlaveSAE, Size: c.KeySize, KeyIDs: ids})
	if err != nil {
		n.t.Fatalf("issue at %s: %v", src, err)
	}
	if err := n.sites[dst].store.RecordAssignment(ctx, iss.Assignment); err != nil {
		n.t.Fatalf("record at %s: %v", dst, err)
	}
	got, err := n.sites[dst].store.ConsumeKeys(ctx, raftstore.ConsumeRequest{RequestID: uuid.NewString(), Caller: c.SlaveSAE,
		MasterSAE: c.MasterSAE, KeyIDs: ids})
	if err != nil {
		n.t.Fatalf("fetch at %s: %v", dst, err)
	}
	for i := range got {
		if !bytes.Equal(got[i].Bits, iss.Keys[i].Bits) {
			n.t.Fatalf("key %s differs between %s and %s", ids[i], src, dst)
		}
	}
}

// usedOnce checks both ends of link a–b agree on relay key consumed per
// direction (every hop commits the same range at both ends).
func (n *testNet) usedOnce(a, b string) {
	n.t.Helper()
	sa, sb := n.sites[a].store.RelayStreams(b), n.sites[b].store.RelayStreams(a)
	if sa != sb {
		n.t.Fatalf("relay streams of %s–%s differ: %+v at %s, %+v at %s", a, b, sa, a, sb, b)
	}
}

// TestRelayLine: in a line A–B–C, a connection between A and C fills
// through B; both ends hold the same keys, and each link's relay key is
// consumed once per delivered block at both of its ends (block plus tag
// key per hop).
func TestRelayLine(t *testing.T) {
	n := newTestNet(t, [2]string{"A", "B"}, [2]string{"B", "C"})
	n.relayKey("A", "B", 8192)
	n.relayKey("B", "C", 8192)
	c := n.connect("A", "C", 16) // 512 bytes
	n.run("A", "B", "C")
	testenv.WaitFor(t, "A's pool full", func() bool { return n.pool("A", c).StoredKeys == 16 })
	if a, cc := n.pool("A", c), n.pool("C", c); a.StoredBits != cc.StoredBits || a.RelayPending != "" {
		t.Fatalf("pools: %+v at A, %+v at C", a, cc)
	}
	n.usedOnce("A", "B")
	n.usedOnce("B", "C")
	st := n.sites["A"].relay.Status(context.Background())
	rc := n.pool("A", c).Relay
	if rc.Burned != 0 || rc.DoneBits != n.pool("A", c).StoredBits || rc.Done != st.Stats.Delivered {
		t.Fatalf("relay counts %+v, stats %+v", rc, st.Stats)
	}
	var used uint64
	for _, l := range [][2]string{{"A", "B"}, {"B", "C"}} {
		used += n.sites[l[0]].store.RelayStreams(l[1])[raftstore.RelayDir(l[0], l[1])].Used
	}
	if want := uint64(rc.DoneBits/8) + uint64(rc.Done)*tagKeyBytes; used != 2*want || int64(used) != rc.HopBytes {
		t.Fatalf("relay key used on the two hops: %d bytes, want 2×%d = the counted %d", used, want, rc.HopBytes)
	}
	if rt := st.Routes["C"]; len(rt.Path) != 3 || rt.Path[1] != "B" {
		t.Fatalf("route to C: %+v", rt)
	}
	n.sameKeys("A", "C", c, 16)
}

// TestRelayRingReroutes: in a ring A–B–C–D, the relay from A to C takes
// the side with more relay key; when that side's middle site stops
// answering, blocks flow through the other side, and a block lost on the
// way is burned at both ends, never delivered twice.
func TestRelayRingReroutes(t *testing.T) {
	n := newTestNet(t, [2]string{"A", "B"}, [2]string{"B", "C"}, [2]string{"C", "D"}, [2]string{"D", "A"})
	n.relayKey("A", "B", 16384)
	n.relayKey("B", "C", 16384)
	n.relayKey("C", "D", 4096)
	n.relayKey("D", "A", 4096)
	n.run("A", "B", "C", "D")
	// Before A has heard from every site it knows one side of the ring
	// only, and the widest path it knows may be the narrow side.
	testenv.WaitFor(t, "A to hear from every site", func() bool {
		sites := n.sites["A"].relay.Status(context.Background()).Sites
		for _, s := range sites {
			if s.AgeSeconds < 0 {
				return false
			}
		}
		return len(sites) == 4
	})
	c := n.connect("A", "C", 8)
	testenv.WaitFor(t, "A's pool full", func() bool { return n.pool("A", c).StoredKeys == 8 })
	if used := n.sites["A"].store.RelayStreams("D")[raftstore.RelayDir("A", "D")].Used; used != 0 {
		t.Fatalf("the narrow side was used (%d bytes) while the wide side had key", used)
	}
	// B stops answering before the pools are emptied: A refills at once.
	n.setDown("B", true)
	n.sameKeys("A", "C", c, 8)
	start := time.Now()
	testenv.WaitFor(t, "A's pool full again", func() bool { return n.pool("A", c).StoredKeys == 8 })
	t.Logf("rerouted around B in %v", time.Since(start))
	if used := n.sites["A"].store.RelayStreams("D")[raftstore.RelayDir("A", "D")].Used; used == 0 {
		t.Fatal("no relay key used through D")
	}
	if a, cc := n.pool("A", c), n.pool("C", c); a.StoredBits != cc.StoredBits {
		t.Fatalf("pools differ: %d bits at A, %d at C", a.StoredBits, cc.StoredBits)
	}
	n.usedOnce("A", "D")
	n.usedOnce("C", "D")
	n.sameKeys("A", "C", c, 8)
}

// TestRelayTamperedHop: a hop whose ciphertext was changed on the way is
// refused by its tag; the block is burned and nothing enters either pool.
func TestRelayTamperedHop(t *testing.T) {
	n := newTestNet(t, [2]string{"A", "B"}, [2]string{"B", "C"})
	n.relayKey("A", "B", 4096)
	n.relayKey("B", "C", 4096)
	c := n.connect("A", "C", 4)
	n.tamper = func(to string, h *Hop) {
		if to == "C" {
			h.CT[0] ^= 1
		}
	}
	n.run("A")
	testenv.WaitFor(t, "a burned block", func() bool { return n.sites["A"].relay.Status(context.Background()).Stats.Burned > 0 })
	if a, cc := n.pool("A", c), n.pool("C", c); a.StoredBits != 0 || cc.StoredBits != 0 {
		t.Fatalf("a tampered block entered a pool: %d bits at A, %d at C", a.StoredBits, cc.StoredBits)
	}
}

// TestHandleHopRefuses: hops that do not fit the route, the caller or the
// relay key are refused with a bad request and change nothing.
func TestHandleHopRefuses(t *testing.T) {
	n := newTestNet(t, [2]string{"A", "B"})
	n.relayKey("A", "B", 1024)
	ok := Hop{Block: "b1", Master: "ghi", Slave: "jkl", Route: []string{"A", "B"}, Index: 1, From: 0, To: 64, CT: make([]byte, 32), Tag: make([]byte, 32)}
	cases := []struct {
		name string
		from string
		mod  func(h *Hop)
	}{
		{"wrong caller", "C", func(h *Hop) {}},
		{"index 0", "A", func(h *Hop) { h.Index = 0 }},
		{"not for this site", "A", func(h *Hop) { h.Route = []string{"A", "C"} }},
		{"repeated site", "A", func(h *Hop) { h.Route = []string{"A", "B", "A"} }},
		{"range does not fit the block", "A", func(h *Hop) { h.To = 40 }},
		{"no block ID", "A", func(h *Hop) { h.Block = "" }},
		{"short tag", "A", func(h *Hop) { h.Tag = h.Tag[:8] }},
	}
	before := n.sites["B"].store.RelayStreams("A")
	for _, tc := range cases {
		h := ok
		tc.mod(&h)
		if _, err := n.sites["B"].relay.HandleHop(context.Background(), tc.from, h); !errors.Is(err, etsi.ErrBadRequest) {
			t.Errorf("%s: %v, want a bad request", tc.name, err)
		}
	}
	// A well-formed hop with a wrong tag is answered not delivered and
	// consumes nothing.
	ans, err := n.sites["B"].relay.HandleHop(context.Background(), "A", ok)
	if err != nil || ans.Delivered || ans.FailedAt != "B" {
		t.Fatalf("bad tag: %+v, %v", ans, err)
	}
	if after := n.sites["B"].store.RelayStreams("A"); after != before {
		t.Fatalf("refused hops changed the relay key: %+v → %+v", before, after)
	}
}
