// Package demo is `qkdkms demo` (make run: two sites of three node
// processes on loopback joined by a simulated QKD link, with a status
// screen; README, Quick start; --sites N: N sites in a line or a ring of
// links) and `qkdkms demo-init` (the PKI, KEKs and
// node configs the compose deployment's init service writes; deploy/).
//
// The server binary links it, so it imports only testcluster/harness:
// no workload, checker, report or plotting code (node's
// TestServerBinaryDeps).
package demo

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"qkdkms/testcluster/harness"
)

// DemoOptions configures RunDemo. Zero values take the `make run` layout.
type DemoOptions struct {
	Binary string // default: this executable
	Dir    string // default .demo
	Nodes  int    // per site, default 3
	// Sites is the number of sites (default 2): Sender first, Receiver
	// last, relay1_app, relay2_app, … between them.
	Sites int
	// Topology of the QKD links: line (default) or ring (≥ 3 sites).
	Topology         string
	Sender, Receiver string
	// Ports of the first and second site (node 1; the other nodes
	// follow) and their seed API ports. Site i ≥ 3 (1-based) listens on
	// ReceiverPort+1000·(i−2) and ReceiverSeedPort+i−2 unless Ports or
	// SeedPorts (by position, 0 = that rule) say otherwise.
	SenderPort       int // default 8443
	ReceiverPort     int // default 9443
	SenderSeedPort   int // default 8000
	ReceiverSeedPort int // default 8001
	Ports, SeedPorts []int
	// Refresh is the status screen period (default 1 s).
	Refresh time.Duration
	// Plain prints the status as appended text blocks instead of redrawing
	// the terminal (default: redraw when stdout is a terminal).
	Plain bool
	// Link joins the sites by a QKD link over a simulated fiber (nil: no
	// link). RunDemo turns it on unless --no-link.
	Link *harness.LinkSpec
	// Driver is the link driver: sim (default: the link section's
	// simulated fiber), devstream (an in-process device emulator streams
	// Alice's and Bob's detections to the two sites) or etsi014 (two
	// in-process emulated ETSI 014 key-delivery devices, one per site).
	Driver string
	// ExtraArgs are appended to every `qkdkms serve`.
	ExtraArgs []string
	// Listeners are bound listeners for some of the ports above, handed
	// to the nodes on their first start (Options.Listeners).
	Listeners []*net.TCPListener
}

// RunDemo is `qkdkms demo`: the CLI shape for the dispatch table.
func RunDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o DemoOptions
	fs.StringVar(&o.Dir, "dir", ".demo", "demo directory: pki/, data/, logs/, config/, kek/")
	fs.StringVar(&o.Binary, "bin", "", "qkdkms binary for the nodes (default: this executable)")
	fs.IntVar(&o.Nodes, "nodes", 3, "nodes per site")
	fs.IntVar(&o.Sites, "sites", 2, "number of sites (≥ 2): the sender's first, the receiver's last, relay1_app, relay2_app, … between")
	fs.StringVar(&o.Topology, "topology", harness.TopologyLine, "QKD links between the sites: line (each site to the next) or ring (and the last to the first; ≥ 3 sites)")
	fs.StringVar(&o.Sender, "sender", harness.DefaultSender, "KME ID of the first site")
	fs.StringVar(&o.Receiver, "receiver", harness.DefaultReceiver, "KME ID of the last site")
	fs.IntVar(&o.SenderPort, "sender-port", 8443, "ETSI mTLS port of the first site's node 1 (node i: +i-1)")
	fs.IntVar(&o.ReceiverPort, "receiver-port", 9443, "ETSI mTLS port of the second site's node 1 (site k ≥ 3: +1000·(k-2))")
	fs.IntVar(&o.SenderSeedPort, "sender-seed-port", 8000, "seed plain-HTTP port of the first site (0 on either = seed API off)")
	fs.IntVar(&o.ReceiverSeedPort, "receiver-seed-port", 8001, "seed plain-HTTP port of the second site (site k ≥ 3: +k-2; 0 = off)")
	fs.DurationVar(&o.Refresh, "refresh", time.Second, "status refresh period")
	fs.BoolVar(&o.Plain, "plain", false, "append status blocks instead of redrawing the screen")
	link := linkFlags(fs, "step plugin directory (default: plugins/ beside the binary, i.e. bin/plugins)")
	fs.StringVar(&o.Driver, "driver", "sim", "QKD link driver: sim (simulated fiber), devstream (device emulator streaming to both sites) or etsi014 (two emulated key-delivery devices)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: qkdkms demo [flags]")
		fmt.Fprintln(stderr, "Starts two KME sites (or --sites N, joined by QKD links in a --topology line or ring)")
		fmt.Fprintln(stderr, "of three node processes each on loopback, shows their status and the commands to")
		fmt.Fprintln(stderr, "try. Ctrl-C stops everything; a second run keeps the keys.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	o.Link = link()
	if err := Demo(ctx, o, stdout); err != nil {
		fmt.Fprintf(stderr, "qkdkms demo: %v\n", err)
		return 1
	}
	return 0
}

// Demo starts the demo cluster, shows its status until ctx ends, then
// stops every node (SIGTERM, wait).
func Demo(ctx context.Context, o DemoOptions, stdout io.Writer) error {
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		o.Binary = exe
	}
	if o.Dir == "" {
		o.Dir = ".demo"
	}
	if o.Refresh <= 0 {
		o.Refresh = time.Second
	}
	for _, p := range []int{o.SenderSeedPort, o.ReceiverSeedPort} {
		if p < 0 {
			return fmt.Errorf("seed ports must be ≥ 0")
		}
	}
	if o.Link != nil && !o.Link.Native && o.Link.PluginDir == "" {
		o.Link.PluginDir = filepath.Join(filepath.Dir(o.Binary), "plugins")
	}
	if o.Link != nil && !o.Link.Native {
		abs, err := filepath.Abs(o.Link.PluginDir)
		if err != nil {
			return err
		}
		o.Link.PluginDir = abs
		if _, err := os.Stat(filepath.Join(abs, "manifest.json")); err != nil {
			return fmt.Errorf("no step plugins in %s (run `make plugins`, or pass --plugin-dir or --native): %w", abs, err)
		}
	}
	ho, err := clusterOptions(o)
	if err != nil {
		return err
	}
	switch o.Driver {
	case "", "sim":
	case "devstream", "etsi014":
		if o.Link == nil {
			return fmt.Errorf("--driver %s needs the QKD link (drop --no-link)", o.Driver)
		}
		if len(ho.Sites) != 2 {
			return fmt.Errorf("--driver %s runs one link between two sites (--sites 2); more sites use sim", o.Driver)
		}
		devs, err := harness.StartDevices(harness.DeviceOptions{Driver: o.Driver, Dir: filepath.Join(o.Dir, "devices"),
			Sites: [2]string{ho.Sites[0], ho.Sites[1]}})
		if err != nil {
			return err
		}
		defer devs.Close()
		o.Link.Links = devs.Links
		if o.Link.BlockBits == 0 {
			o.Link.BlockBits = 40_000 // a block every second or two from the devices
		}
		fmt.Fprintf(stdout, "qkdkms demo: link driver %s: %s plays Alice, %s Bob; devices in %s\n", o.Driver, devs.Alice, devs.Bob, filepath.Join(o.Dir, "devices"))
	default:
		return fmt.Errorf("unknown --driver %q (sim, devstream or etsi014)", o.Driver)
	}
	c, err := harness.New(ho)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "qkdkms demo: starting %d sites × %d nodes in %s (logs in %s)\n", len(c.Layout.Sites), len(c.Nodes(c.Sender())), c.Layout.Dir, filepath.Join(c.Layout.Dir, "logs"))
	for _, s := range c.Layout.Sites {
		for _, n := range s.Nodes {
			if err := c.StartNode(n.ID); err != nil {
				c.StopAll()
				return err
			}
		}
	}
	defer func() {
		fmt.Fprintln(stdout, "\nqkdkms demo: stopping the nodes (SIGTERM)…")
		c.StopAll()
		fmt.Fprintln(stdout, "qkdkms demo: stopped; data kept in", filepath.Join(c.Layout.Dir, "data"))
	}()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = c.WaitLeaders(wctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("sites did not come up: %w\n%s", err, c.TailLogs(15))
	}
	d := &demoScreen{c: c, o: o, out: stdout, redraw: !o.Plain && isTerminal(stdout)}
	if !d.redraw {
		fmt.Fprint(stdout, d.commands())
	}
	t := time.NewTicker(o.Refresh)
	defer t.Stop()
	for {
		d.draw(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// SiteIDs names the n sites of the demo: sender first, receiver last (as
// with two sites), relay1_app, relay2_app, … between them.
func SiteIDs(n int, sender, receiver string) []string {
	if sender == "" {
		sender = harness.DefaultSender
	}
	if receiver == "" {
		receiver = harness.DefaultReceiver
	}
	ids := []string{sender}
	for i := 1; i <= n-2; i++ {
		ids = append(ids, fmt.Sprintf("relay%d_app", i))
	}
	return append(ids, receiver)
}

// clusterOptions is the harness layout of o (ports after the second
// site's by the DemoOptions rule).
func clusterOptions(o DemoOptions) (harness.Options, error) {
	if o.Sites == 0 {
		o.Sites = 2
	}
	if o.Sites < 2 {
		return harness.Options{}, fmt.Errorf("--sites %d: need at least 2", o.Sites)
	}
	if o.SenderPort == 0 {
		o.SenderPort = 8443
	}
	if o.ReceiverPort == 0 {
		o.ReceiverPort = 9443
	}
	sites := SiteIDs(o.Sites, o.Sender, o.Receiver)
	seed := o.SenderSeedPort > 0 && o.ReceiverSeedPort > 0
	ports, seeds := make([]int, len(sites)), make([]int, len(sites))
	copy(ports, o.Ports)
	copy(seeds, o.SeedPorts)
	for i := range sites {
		rule, seedRule := o.ReceiverPort+1000*(i-1), o.ReceiverSeedPort+i-1
		if i == 0 {
			rule, seedRule = o.SenderPort, o.SenderSeedPort
		}
		if ports[i] == 0 {
			ports[i] = rule
		}
		if seeds[i] == 0 && seed {
			seeds[i] = seedRule
		}
	}
	if !seed {
		seeds = nil
	}
	return harness.Options{
		Binary: o.Binary, Dir: o.Dir, Nodes: o.Nodes, Sites: sites, Topology: o.Topology,
		Ports: ports, SeedPorts: seeds, Seed: seed,
		SAEs: []string{"ghi", "jkl"}, ExtraArgs: o.ExtraArgs, Link: o.Link, Listeners: o.Listeners,
	}, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

type demoScreen struct {
	c      *harness.Cluster
	o      DemoOptions
	out    io.Writer
	redraw bool
	n      int
}

// connStats are one connection's pool figures from the leader's metrics.
type connStats struct {
	stored, bits, issued, burned, erased, blocks float64
}

// siteView is what the status screen shows for one site.
type siteView struct {
	leader string
	nodes  []nodeView
	conns  map[string]*connStats // "master→slave"
	links  map[string]*linkView  // by peer KME
	// routes are the trusted-node relay's routes from this site
	// (qkdkms_relay_route_width_bytes): destination → "a>b>c", width.
	routes map[string]relayRoute
	// relayed are the blocks relayed from here (qkdkms_relay_blocks_total).
	relayed, relayBurned float64
}

type relayRoute struct {
	path  string
	width float64
}

// linkView is one QKD link's figures from the leader's qkdkms_link_* metrics.
type linkView struct {
	role                             string
	up                               bool
	ok, aborted, qber, rate, eve     float64
	committed, padsLeft, mismatching float64
	driver                           string
	driverOK                         bool
	relayOut, relayIn                float64 // relay pool bytes per direction
}

type nodeView struct {
	id, state, addr string
	term, commit    float64
	pid             int
}

func (d *demoScreen) collect(ctx context.Context, site *harness.Site) siteView {
	v := siteView{conns: map[string]*connStats{}, links: map[string]*linkView{}, routes: map[string]relayRoute{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	v.nodes = make([]nodeView, len(site.Nodes))
	for i, n := range site.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nv := nodeView{id: n.ID, addr: n.Addr(), state: "down", pid: d.c.Pid(n.ID)}
			if nv.pid != 0 {
				nv.state = "starting"
			}
			cctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
			defer cancel()
			m, err := d.c.Metrics(cctx, n.ID)
			if err == nil {
				for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
					if m[`qkdkms_raft_state{state="`+s+`"}`] == 1 {
						nv.state = s
					}
				}
				nv.term, nv.commit = m["qkdkms_raft_term"], m["qkdkms_raft_commit_index"]
			}
			mu.Lock()
			defer mu.Unlock()
			v.nodes[i] = nv
			if err != nil || m["qkdkms_raft_is_leader"] != 1 {
				return
			}
			v.leader = n.ID
			for k, val := range m {
				name, labels := splitMetric(k)
				switch {
				case strings.HasPrefix(name, "qkdkms_pool_") || strings.HasPrefix(name, "qkdkms_keys_") || name == "qkdkms_blocks_added_total":
					key := labels["master"] + "→" + labels["slave"]
					cs := v.conns[key]
					if cs == nil {
						cs = &connStats{}
						v.conns[key] = cs
					}
					switch name {
					case "qkdkms_pool_stored_keys":
						cs.stored = val
					case "qkdkms_pool_stored_bits":
						cs.bits = val
					case "qkdkms_keys_issued":
						cs.issued = val
					case "qkdkms_keys_burned_total":
						cs.burned = val
					case "qkdkms_keys_erased_total":
						cs.erased = val
					case "qkdkms_blocks_added_total":
						cs.blocks = val
					}
				case name == "qkdkms_relay_route_width_bytes":
					v.routes[labels["destination"]] = relayRoute{path: labels["route"], width: val}
				case name == "qkdkms_relay_blocks_total" && labels["outcome"] == "delivered":
					v.relayed = val
				case name == "qkdkms_relay_blocks_total" && labels["outcome"] == "burned":
					v.relayBurned = val
				case strings.HasPrefix(name, "qkdkms_link_") || name == "qkdkms_relay_pool_bytes":
					lv := v.links[labels["peer"]]
					if lv == nil {
						lv = &linkView{}
						v.links[labels["peer"]] = lv
					}
					switch name {
					case "qkdkms_link_connected":
						lv.up, lv.role = val == 1, labels["role"]
					case "qkdkms_link_sessions_total":
						if labels["outcome"] == "ok" {
							lv.ok = val
						} else {
							lv.aborted = val
						}
					case "qkdkms_link_qber":
						lv.qber = val
					case "qkdkms_link_key_rate_bits_per_second":
						lv.rate = val
					case "qkdkms_link_eve_fraction":
						lv.eve = val
					case "qkdkms_link_committed_bits_total":
						lv.committed = val
					case "qkdkms_link_auth_pad_bytes_left":
						lv.padsLeft = val
					case "qkdkms_link_plugin_mismatch":
						lv.mismatching = val
					case "qkdkms_link_driver_ok":
						lv.driver, lv.driverOK = labels["driver"], val == 1
					case "qkdkms_relay_pool_bytes":
						if labels["direction"] == "out" {
							lv.relayOut = val
						} else {
							lv.relayIn = val
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	return v
}

func (d *demoScreen) draw(ctx context.Context) {
	var b strings.Builder
	d.n++
	if d.redraw {
		b.WriteString("\x1b[H\x1b[2J")
		b.WriteString(d.commands())
	} else if d.n%10 != 1 {
		return // plain mode: a block every 10 refreshes
	}
	fmt.Fprintf(&b, "── status %s ──\n", time.Now().Format("15:04:05"))
	if len(d.c.Layout.Sites) > 2 {
		fmt.Fprintf(&b, "%s\n", d.topology())
	}
	for _, s := range d.c.Layout.Sites {
		v := d.collect(ctx, s)
		leader := v.leader
		if leader == "" {
			leader = "(none: election or minority)"
		}
		fmt.Fprintf(&b, "site %-14s leader %s\n", s.KMEID, leader)
		for _, n := range v.nodes {
			fmt.Fprintf(&b, "  %-16s %-21s %-9s term %-3.0f commit %-6.0f pid %d\n", n.id, n.addr, n.state, n.term, n.commit, n.pid)
		}
		keys := make([]string, 0, len(v.conns))
		for k := range v.conns {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if len(keys) == 0 {
			b.WriteString("  connections: none yet (register one: see above)\n")
		}
		for _, k := range keys {
			cs := v.conns[k]
			fmt.Fprintf(&b, "  %-12s stored %4.0f keys (%6.0f bits)  issued %4.0f  erased %5.0f  burned %3.0f  blocks %4.0f\n",
				k, cs.stored, cs.bits, cs.issued, cs.erased, cs.burned, cs.blocks)
		}
		if len(v.links) == 0 {
			b.WriteString("  link: none configured (keys reach pools only by admin block import)\n")
		}
		peers := make([]string, 0, len(v.links))
		for p := range v.links {
			peers = append(peers, p)
		}
		sort.Strings(peers)
		for _, peer := range peers {
			lv := v.links[peer]
			state := "down"
			if lv.up {
				state = "up"
			}
			note := ""
			if lv.eve > 0 {
				note += fmt.Sprintf("  EAVESDROPPER on %.0f%% of pulses", 100*lv.eve)
			}
			if lv.mismatching == 1 {
				note += "  PLUGIN MISMATCH (see `qkdkms link status`)"
			}
			if lv.driver != "" {
				health := "ok"
				if !lv.driverOK {
					health = "DEVICE NOT OK (see `qkdkms link status`)"
				}
				state += ", driver " + lv.driver + " " + health
			}
			fmt.Fprintf(&b, "  QKD link to %s (%s, %s): %3.0f sessions ok, %3.0f aborted, QBER %5.2f%%, %7.0f bit/s, %8.0f bits committed%s\n",
				peer, lv.role, state, lv.ok, lv.aborted, 100*lv.qber, lv.rate, lv.committed, note)
			if lv.relayOut > 0 || lv.relayIn > 0 {
				fmt.Fprintf(&b, "    relay pool: %6.0f B to send, %6.0f B to receive\n", lv.relayOut, lv.relayIn)
			}
		}
		dests := make([]string, 0, len(v.routes))
		for dst := range v.routes {
			dests = append(dests, dst)
		}
		sort.Strings(dests)
		for _, dst := range dests {
			rt := v.routes[dst]
			fmt.Fprintf(&b, "  relay route to %s: %s (%0.f B of relay key on its narrowest hop)\n", dst, strings.ReplaceAll(rt.path, ">", " → "), rt.width)
		}
		if v.relayed > 0 || v.relayBurned > 0 {
			fmt.Fprintf(&b, "  relayed from here: %.0f blocks, %.0f burned (`qkdkms network status`)\n", v.relayed, v.relayBurned)
		}
	}
	b.WriteString("Ctrl-C stops all nodes (data kept for the next run).\n")
	fmt.Fprint(d.out, b.String())
}

// topology is the line of sites and their QKD links ("a ═ b ═ c", the
// ring's first site again at its end).
func (d *demoScreen) topology() string {
	l := d.c.Layout
	if len(l.Links) == 0 {
		return "sites: " + strings.Join(d.c.Sites(), ", ") + " (no QKD links)"
	}
	ids := d.c.Sites()
	kind := harness.TopologyLine
	if len(l.Links) == len(ids) && len(ids) > 2 {
		kind, ids = harness.TopologyRing, append(ids, ids[0])
	}
	return "QKD links (" + kind + "): " + strings.Join(ids, " ═ ")
}

// commands is the block of commands to try, with this demo's ports: an
// SAE ghi at the first site and jkl at the last, which share keys through
// the sites between them when there are more than two.
func (d *demoScreen) commands() string {
	c := d.c
	var b strings.Builder
	pkiDir := relPath(c.Layout.PKIDir)
	sites := c.Layout.Sites
	snd, rcv := sites[0], sites[len(sites)-1]
	if len(sites) == 2 {
		b.WriteString("qkdkms demo — two KME sites on loopback\n\n")
	} else {
		fmt.Fprintf(&b, "qkdkms demo — %d KME sites on loopback\n%s\n", len(sites), d.topology())
		if c.Layout.Linked(snd.KMEID, rcv.KMEID) {
			fmt.Fprintf(&b, "ghi at %s and jkl at %s below share a QKD link.\n\n", snd.KMEID, rcv.KMEID)
		} else {
			fmt.Fprintf(&b, "ghi at %s and jkl at %s below share no QKD link: trusted nodes relay their keys.\n\n", snd.KMEID, rcv.KMEID)
		}
	}
	if snd.SeedAddr != "" && rcv.SeedAddr != "" {
		sp, rp := portOf(snd.SeedAddr), portOf(rcv.SeedAddr)
		fmt.Fprintf(&b, "Seed API (plain HTTP, as in the seed's README):\n")
		fmt.Fprintf(&b, "  curl --location 'http://localhost:%s/register_connection' --header 'Content-Type: application/json' \\\n", sp)
		fmt.Fprintf(&b, "    --data '{\"source_KME_ID\": \"%s\", \"target_KME_ID\": \"%s\", \"master_SAE_ID\": \"ghi\", \"slave_SAE_ID\": \"jkl\",\n", snd.KMEID, rcv.KMEID)
		b.WriteString("      \"key_size\": 8, \"max_keys_count\": 10, \"max_key_per_request\": 1, \"max_SAE_ID_count\": 0}'\n")
		fmt.Fprintf(&b, "  curl --location 'http://127.0.0.1:%s/get_key?slave_host=jkl' --data ''\n", sp)
		fmt.Fprintf(&b, "  curl --location 'http://127.0.0.1:%s/get_key?key_id=KEY_ID' --data ''\n\n", rp)
	}
	m, s := snd.Nodes[0].Addr(), rcv.Nodes[0].Addr()
	if len(snd.Nodes) > 1 {
		m = snd.Nodes[1].Addr() // a follower, most of the time: it forwards to the leader
	}
	fmt.Fprintf(&b, "ETSI GS QKD 014 over mutual TLS (any node of a site answers):\n")
	ghi := fmt.Sprintf("--cert %s/ghi.crt --key %s/ghi.key --cacert %s/ca.crt", pkiDir, pkiDir, pkiDir)
	jkl := fmt.Sprintf("--cert %s/jkl.crt --key %s/jkl.key --cacert %s/ca.crt", pkiDir, pkiDir, pkiDir)
	fmt.Fprintf(&b, "  curl %s https://%s/api/v1/keys/jkl/status\n", ghi, snd.Nodes[0].Addr())
	fmt.Fprintf(&b, "  curl %s -H 'Content-Type: application/json' -d '{\"number\":1}' https://%s/api/v1/keys/jkl/enc_keys\n", ghi, m)
	fmt.Fprintf(&b, "  curl %s 'https://%s/api/v1/keys/ghi/dec_keys?key_ID=KEY_ID'\n", jkl, s)
	bin := relPath(d.c.Options().Binary)
	fmt.Fprintf(&b, "The same with the Go SAE client:\n")
	fmt.Fprintf(&b, "  %s sae enc jkl --kme https://%s --cert %s/ghi.crt --key %s/ghi.key --ca %s/ca.crt\n", bin, m, pkiDir, pkiDir, pkiDir)
	fmt.Fprintf(&b, "  %s sae dec ghi --key-id KEY_ID --kme https://%s --cert %s/jkl.crt --key %s/jkl.key --ca %s/ca.crt\n", bin, s, pkiDir, pkiDir, pkiDir)
	fmt.Fprintf(&b, "More SAE certificates: %s certs sae NAME --pki %s\n\n", bin, pkiDir)
	return b.String()
}

func portOf(addr string) string {
	i := strings.LastIndexByte(addr, ':')
	return addr[i+1:]
}

func relPath(p string) string {
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

// splitMetric splits `name{a="x",b="y"}` into name and labels.
func splitMetric(k string) (string, map[string]string) {
	i := strings.IndexByte(k, '{')
	if i < 0 {
		return k, nil
	}
	labels := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSuffix(k[i+1:], "}"), ",") {
		name, val, ok := strings.Cut(kv, "=")
		if ok {
			labels[strings.TrimSpace(name)] = strings.Trim(val, `"`)
		}
	}
	return k[:i], labels
}

// linkFlags registers the QKD link flags shared by `demo` and `demo-init`
// and returns a function giving the chosen LinkSpec after parsing (nil with
// --no-link).
func linkFlags(fs *flag.FlagSet, pluginDirHelp string) func() *harness.LinkSpec {
	link := harness.LinkSpec{}
	noLink := fs.Bool("no-link", false, "no QKD link between the sites (pools only by admin block import)")
	fs.StringVar(&link.PluginDir, "plugin-dir", "", pluginDirHelp)
	fs.BoolVar(&link.Native, "native", false, "run the step code natively instead of as WASM plugins")
	fs.Float64Var(&link.FiberKm, "fiber-km", 25, "simulated fiber length in km")
	return func() *harness.LinkSpec {
		if *noLink {
			return nil
		}
		return &link
	}
}
