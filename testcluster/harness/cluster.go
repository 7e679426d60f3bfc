package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Sentinel errors of the harness.
var (
	ErrNoLeader    = errors.New("harness: no leader")
	ErrUnknownNode = errors.New("harness: unknown node")
	ErrNotRunning  = errors.New("harness: node not running")
)

// Options configures a process-mode cluster.
type Options struct {
	// Binary is the qkdkms binary (bin/qkdkms). Required.
	Binary string
	// Dir is the work directory (PKI, configs, data, logs). Required.
	// Starting again with the same Dir keeps the sites' data.
	Dir string
	// Sites are the KME IDs of the sites, at least two (default Sender,
	// Receiver). Sender and Receiver are then the first two.
	Sites []string
	// Topology joins the sites by QKD links (with Link): TopologyLine
	// (default; site i to site i+1) or TopologyRing (≥ 3 sites). Sites
	// without a link still reach each other for classical messages.
	Topology string
	// Sender and Receiver are the first two KME IDs (default sender_app,
	// receiver_app), used when Sites is empty.
	Sender, Receiver string
	// Nodes per site (default 3).
	Nodes int
	// SenderPort and ReceiverPort are node 1's TLS port of the first two
	// sites (default 8443/9443); 0 with FreePorts picks free ports.
	SenderPort, ReceiverPort int
	// Ports are node 1's TLS port of each site by position in Sites; an
	// entry of 0 (or none) takes SenderPort/ReceiverPort for the first two
	// and, without FreePorts, ReceiverPort+1000·(i−1) for site i ≥ 2
	// (0-based: 10443, 11443, … by default). Node j listens on port+j−1.
	Ports []int
	// Seed turns the plain-HTTP seed API on, on node 1 of each site, at
	// SenderSeedPort / ReceiverSeedPort (default 8000/8001, or free ports
	// with FreePorts) and, for site i ≥ 2, SeedPorts[i] (default
	// ReceiverSeedPort+i−1: 8002, 8003, …).
	Seed                             bool
	SenderSeedPort, ReceiverSeedPort int
	SeedPorts                        []int
	// FreePorts picks free loopback ports for every port left 0: the
	// harness binds them and hands each to the node that serves on it
	// (Listeners), so no other program can take one in between.
	FreePorts bool
	// Listeners are bound loopback listeners, kept open by the caller
	// until the cluster starts: a node whose TLS or seed port is one of
	// theirs inherits that socket on its first start instead of binding
	// the port (a restart binds it again, as a restarted process would).
	Listeners []*net.TCPListener
	// SAEs to issue certificates for (default ghi, jkl).
	SAEs []string
	// Raft timing ("" = node defaults), NoSync for tests.
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout string
	NoSync                                                bool
	LogLevel                                              string
	// Snapshot tuning ("" / 0 = node defaults).
	SnapshotInterval  string
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// Netns runs every node in its own network namespace on a private
	// bridge (root only; see netns.go): needed for Isolate and CutLink.
	// Ports are then 8443 on every node and 8000+i for site i's seed API
	// (8000/8001 for the first two); at most 4 sites.
	Netns bool
	// DataTmpfsMB mounts a tmpfs of this size on every node's data
	// directory (root only; see disk.go): needed for FillDisk.
	DataTmpfsMB int
	// Link joins the sites by QKD links in Topology (nil: no link; pools
	// are filled by admin block import); its RelayPoolBytes and RelayShare
	// go to every link.
	Link *LinkSpec
	// ExtraArgs are appended to `qkdkms serve --config FILE`.
	ExtraArgs []string
	// Env is added to each node's environment.
	Env []string
	// Logger for harness events (nil = discard).
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Sender == "" {
		o.Sender = DefaultSender
	}
	if o.Receiver == "" {
		o.Receiver = DefaultReceiver
	}
	if len(o.Sites) == 0 {
		o.Sites = []string{o.Sender, o.Receiver}
	} else {
		o.Sites = append([]string(nil), o.Sites...)
		o.Sender = o.Sites[0]
		if len(o.Sites) > 1 {
			o.Receiver = o.Sites[1]
		}
	}
	if o.Topology == "" {
		o.Topology = TopologyLine
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.SAEs == nil {
		o.SAEs = []string{"ghi", "jkl"}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if !o.FreePorts {
		if o.SenderPort == 0 {
			o.SenderPort = 8443
		}
		if o.ReceiverPort == 0 {
			o.ReceiverPort = 9443
		}
	}
	// Ports and SeedPorts get one entry per site; SenderPort... mirror
	// the first two.
	ports := make([]int, len(o.Sites))
	copy(ports, o.Ports)
	seeds := make([]int, len(o.Sites))
	copy(seeds, o.SeedPorts)
	for i, p := range [2]int{o.SenderPort, o.ReceiverPort} {
		if i < len(ports) && ports[i] == 0 {
			ports[i] = p
		}
	}
	for i, p := range [2]int{o.SenderSeedPort, o.ReceiverSeedPort} {
		if i < len(seeds) && seeds[i] == 0 {
			seeds[i] = p
		}
	}
	o.Ports, o.SeedPorts = ports, seeds
	o.SenderPort, o.SenderSeedPort = o.Ports[0], o.SeedPorts[0]
	if len(o.Ports) > 1 {
		o.ReceiverPort, o.ReceiverSeedPort = o.Ports[1], o.SeedPorts[1]
	}
	return o
}

// check refuses options no cluster can run with.
func (o Options) check() error {
	if o.Binary == "" || o.Dir == "" {
		return fmt.Errorf("%w: binary and dir are required", ErrLayout)
	}
	if _, err := TopologyLinks(o.Sites, o.Topology); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, s := range o.Sites {
		if s == "" || seen[s] {
			return fmt.Errorf("%w: site KME IDs must be non-empty and distinct: %q", ErrLayout, o.Sites)
		}
		seen[s] = true
	}
	if len(o.Ports) > len(o.Sites) || len(o.SeedPorts) > len(o.Sites) {
		return fmt.Errorf("%w: more ports than sites", ErrLayout)
	}
	return nil
}

// checkPorts refuses a layout whose sites share a port (after defaults).
// layout is the layout these options give the sites: Raft settings, SAEs,
// the link, on the local machine's ports (netns.go adds its addresses).
func (o Options) layout(sites []SiteSpec) LayoutOptions {
	return LayoutOptions{
		Dir: o.Dir, Sites: sites, Topology: o.Topology, SAEs: o.SAEs,
		HeartbeatTimeout: o.HeartbeatTimeout, ElectionTimeout: o.ElectionTimeout, LeaderLeaseTimeout: o.LeaderLeaseTimeout,
		NoSync: o.NoSync, LogLevel: o.LogLevel,
		SnapshotInterval: o.SnapshotInterval, SnapshotThreshold: o.SnapshotThreshold, TrailingLogs: o.TrailingLogs,
		Link: o.Link,
	}
}

func (o Options) checkPorts() error {
	owner := map[int]string{}
	claim := func(p int, what string) error {
		if p < 1 || p > 65535 {
			return fmt.Errorf("%w: %s: port %d out of range", ErrLayout, what, p)
		}
		if prev, ok := owner[p]; ok {
			return fmt.Errorf("%w: port %d of %s is also %s", ErrLayout, p, what, prev)
		}
		owner[p] = what
		return nil
	}
	for i, site := range o.Sites {
		for j := 1; j <= o.Nodes; j++ {
			if err := claim(o.Ports[i]+j-1, NodeID(site, j)); err != nil {
				return err
			}
		}
		if o.Seed {
			if err := claim(o.SeedPorts[i], site+" seed API"); err != nil {
				return err
			}
		}
	}
	return nil
}

// Cluster is the sites' node processes.
type Cluster struct {
	opts   Options
	Layout *Layout
	log    *slog.Logger

	mu    sync.Mutex
	procs map[string]*proc

	httpMu sync.Mutex
	https  map[string]*http.Client // by certificate name

	netns   *netnsSetup
	mounted map[string]bool // node ID → tmpfs mounted on its data dir

	// inherit holds bound listening sockets by address until the node
	// serving there first starts and inherits them (Options.Listeners).
	inherit map[string]*os.File

	// external, when set, reports the state of nodes the harness does not
	// run as child processes (compose mode): whether node id runs, and
	// whether it cannot answer (paused or cut off) and is to be skipped.
	external func(id string) (running, unreachable bool)
}

type proc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	stopped bool // SIGSTOPped
	logf    *os.File
}

// New generates the layout (keeping existing PKI, KEKs and data) without
// starting anything.
func New(o Options) (*Cluster, error) {
	o = o.withDefaults()
	if err := o.check(); err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLayout, err)
	}
	o.Binary = bin
	if o.Netns {
		return newNetnsCluster(o)
	}
	// lns are the listeners FreePorts bound, closed if New fails.
	var lns []*net.TCPListener
	fail := func(err error) (*Cluster, error) {
		for _, l := range lns {
			l.Close()
		}
		return nil, err
	}
	if o.FreePorts {
		// Node ports must be consecutive per site: find contiguous runs.
		reserve := func(p *int, n int) error {
			if *p != 0 {
				return nil
			}
			run, err := ReserveRun(n)
			if err != nil {
				return err
			}
			lns = append(lns, run...)
			*p = port(run[0])
			return nil
		}
		for i := range o.Sites {
			if err := reserve(&o.Ports[i], o.Nodes); err != nil {
				return fail(err)
			}
		}
		for i := range o.Sites {
			if !o.Seed {
				break
			}
			if err := reserve(&o.SeedPorts[i], 1); err != nil {
				return fail(err)
			}
		}
		o.Listeners = append(lns, o.Listeners...)
	}
	for i := range o.Sites {
		switch {
		case !o.Seed:
			o.SeedPorts[i] = 0
		case o.SeedPorts[i] != 0:
		case i == 0:
			o.SeedPorts[i] = 8000
		case i == 1:
			o.SeedPorts[i] = 8001
		default:
			o.SeedPorts[i] = o.SeedPorts[1] + i - 1
		}
		if o.Ports[i] == 0 && i >= 2 {
			o.Ports[i] = o.Ports[1] + 1000*(i-1)
		}
	}
	o.SenderPort, o.ReceiverPort = o.Ports[0], o.Ports[1]
	o.SenderSeedPort, o.ReceiverSeedPort = o.SeedPorts[0], o.SeedPorts[1]
	if err := o.checkPorts(); err != nil {
		return fail(err)
	}
	sites := make([]SiteSpec, len(o.Sites))
	for i, id := range o.Sites {
		sites[i] = SiteSpec{KMEID: id, Nodes: o.Nodes, BasePort: o.Ports[i], SeedPort: o.SeedPorts[i]}
	}
	l, err := Generate(o.layout(sites))
	if err != nil {
		return fail(err)
	}
	c := &Cluster{opts: o, Layout: l, log: o.Logger, procs: map[string]*proc{}, https: map[string]*http.Client{}, inherit: map[string]*os.File{}}
	for _, ln := range o.Listeners {
		f, err := ln.File()
		if err != nil {
			c.closeInherited()
			return nil, fmt.Errorf("harness: listener %s: %w", ln.Addr(), err)
		}
		ln.Close() // f holds the socket now
		c.inherit[ln.Addr().String()] = f
	}
	return c, nil
}

// closeInherited closes the sockets no node took over.
func (c *Cluster) closeInherited() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for a, f := range c.inherit {
		f.Close()
		delete(c.inherit, a)
	}
}

// Start generates the layout, starts every node and waits until each site
// has a leader (or ctx ends).
func Start(ctx context.Context, o Options) (*Cluster, error) {
	c, err := New(o)
	if err != nil {
		return nil, err
	}
	for _, s := range c.Layout.Sites {
		for _, n := range s.Nodes {
			if err := c.StartNode(n.ID); err != nil {
				c.StopAll()
				return nil, err
			}
		}
	}
	// A node that exits while the sites come up (a config it refuses, a
	// port taken) ends the wait at once instead of at ctx's deadline.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c.mu.Lock()
	for id, p := range c.procs {
		go func() {
			select {
			case <-p.done:
				cancel(fmt.Errorf("%w: %s exited while the sites started (%v)", ErrNotRunning, id, p.err))
			case <-wctx.Done():
			}
		}()
	}
	c.mu.Unlock()
	if err := c.WaitLeaders(wctx); err != nil {
		if cause := context.Cause(wctx); errors.Is(cause, ErrNotRunning) {
			err = cause
		}
		c.StopAll()
		return nil, fmt.Errorf("%w\n%s", err, c.TailLogs(20))
	}
	return c, nil
}

// Options returns the options the cluster runs with (defaults applied).
func (c *Cluster) Options() Options { return c.opts }

// Sender and Receiver are the KME IDs of the first two sites.
func (c *Cluster) Sender() string   { return c.opts.Sender }
func (c *Cluster) Receiver() string { return c.opts.Receiver }

// Sites lists every site's KME ID, in order.
func (c *Cluster) Sites() []string {
	out := make([]string, len(c.Layout.Sites))
	for i, s := range c.Layout.Sites {
		out[i] = s.KMEID
	}
	return out
}

// StartNode starts node id as a child process in its own process group,
// appending its output to its log file. A running node is left alone.
func (c *Cluster) StartNode(id string) error {
	n := c.Layout.Node(id)
	if n == nil {
		return fmt.Errorf("%w: %s", ErrUnknownNode, id)
	}
	if err := c.mountData(n); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.procs[id]; p != nil && !p.exited() {
		return nil
	}
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	fmt.Fprintf(logf, "\n=== testcluster: start %s at %s ===\n", id, time.Now().Format(time.RFC3339Nano))
	args := append([]string{"serve", "--config", n.ConfigPath}, c.opts.ExtraArgs...)
	name := c.opts.Binary
	if n.Netns != "" {
		args = append([]string{"netns", "exec", n.Netns, name}, args...)
		name = "ip"
	}
	// Sockets the harness holds for this node are handed over (fd 3 and
	// up) and closed here: from then on the node alone holds its ports.
	var handed []*os.File
	for _, h := range []struct{ addr, flag string }{{n.Listen, "--listen-fd"}, {n.SeedListen, "--seed-listen-fd"}} {
		if f := c.inherit[h.addr]; f != nil && h.addr != "" && n.Netns == "" {
			args = append(args, h.flag, strconv.Itoa(3+len(handed)))
			handed = append(handed, f)
			delete(c.inherit, h.addr)
		}
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), c.opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = handed
	err = cmd.Start()
	for _, f := range handed {
		f.Close()
	}
	if err != nil {
		logf.Close()
		return fmt.Errorf("harness: start %s: %w", id, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), logf: logf}
	c.procs[id] = p
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	c.log.Info("node started", "node", id, "pid", cmd.Process.Pid)
	return nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Running reports whether node id's process is alive (stopped counts).
func (c *Cluster) Running(id string) bool {
	if c.external != nil {
		running, _ := c.external(id)
		return running
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[id]
	return p != nil && !p.exited()
}

// Pid returns node id's process ID (0 when not running).
func (c *Cluster) Pid(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.procs[id]; p != nil && !p.exited() {
		return p.cmd.Process.Pid
	}
	return 0
}

func (c *Cluster) signal(id string, sig syscall.Signal) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[id]
	if p == nil || p.exited() {
		return nil, fmt.Errorf("%w: %s", ErrNotRunning, id)
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return nil, fmt.Errorf("harness: signal %v to %s: %w", sig, id, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped = false
	}
	return p, nil
}

// Kill sends SIGKILL to node id's process group and waits for it to exit.
func (c *Cluster) Kill(id string) error {
	p, err := c.signal(id, syscall.SIGKILL)
	if err != nil {
		return err
	}
	<-p.done
	c.log.Info("node killed", "node", id)
	return nil
}

// Stop freezes node id (SIGSTOP); Cont resumes it (SIGCONT).
func (c *Cluster) Stop(id string) error {
	_, err := c.signal(id, syscall.SIGSTOP)
	if err == nil {
		c.log.Info("node stopped", "node", id)
	}
	return err
}

// Cont resumes a node frozen by Stop.
func (c *Cluster) Cont(id string) error {
	_, err := c.signal(id, syscall.SIGCONT)
	if err == nil {
		c.log.Info("node continued", "node", id)
	}
	return err
}

// Terminate stops node id gracefully: SIGCONT (if frozen), SIGTERM, then
// SIGKILL after grace.
func (c *Cluster) Terminate(id string, grace time.Duration) error {
	c.mu.Lock()
	p := c.procs[id]
	c.mu.Unlock()
	if p == nil || p.exited() {
		return nil
	}
	pg := -p.cmd.Process.Pid
	_ = syscall.Kill(pg, syscall.SIGCONT)
	_ = syscall.Kill(pg, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(pg, syscall.SIGKILL)
		<-p.done
	}
	// Children of the group (none expected) go too.
	_ = syscall.Kill(pg, syscall.SIGKILL)
	return nil
}

// Restart terminates node id (if running) and starts it again with the same
// data directory.
func (c *Cluster) Restart(id string) error {
	if err := c.Terminate(id, 10*time.Second); err != nil {
		return err
	}
	return c.StartNode(id)
}

// StopAll terminates every node (SIGTERM, SIGKILL after 10 s) and waits.
func (c *Cluster) StopAll() {
	c.mu.Lock()
	ids := make([]string, 0, len(c.procs))
	for id := range c.procs {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Terminate(id, 10*time.Second)
		}()
	}
	wg.Wait()
	c.httpMu.Lock()
	for _, h := range c.https {
		h.CloseIdleConnections()
	}
	c.httpMu.Unlock()
	if c.netns != nil {
		c.netns.remove()
		c.netns = nil
	}
	c.unmountAll()
	c.closeInherited()
}
